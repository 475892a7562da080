package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// The one meter draws a bar for a known total (pull's callback, a commit) and a
// plain count for an unknown one, and ends its line when done.
func TestProgressMeter(t *testing.T) {
	var out bytes.Buffer
	p := &progress{out: &out, label: "pull r", start: time.Now(), on: true}
	p.set(1<<20, 4<<20)
	p.set(4<<20, 4<<20) // done == total draws even within 100 ms
	p.done()
	s := out.String()
	if !strings.Contains(s, "\rpull r: [=======") || !strings.Contains(s, " 25% 1.0 MiB/4.0 MiB ") ||
		!strings.Contains(s, " 100% 4.0 MiB/4.0 MiB ") || !strings.HasSuffix(s, "\n") {
		t.Fatalf("meter output %q", s)
	}

	out.Reset()
	p = &progress{out: &out, label: "export", start: time.Now(), on: true}
	if _, err := p.writer(&bytes.Buffer{}).Write(make([]byte, 3<<20)); err != nil {
		t.Fatal(err)
	}
	p.done()
	if s := out.String(); !strings.Contains(s, "\rexport: 3.0 MiB ") || !strings.HasSuffix(s, "\n") {
		t.Fatalf("meter output %q", s)
	}

	out.Reset()
	p = &progress{out: &out, label: "quiet", start: time.Now()}
	p.set(1, 2)
	p.done()
	if out.Len() != 0 {
		t.Fatalf("a meter that is off wrote %q", out.String())
	}
}
