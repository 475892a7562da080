package blobio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

type recorder struct {
	*bytes.Reader
	in      []Intent
	ctx     []context.Context
	evicted [][2]int64
}

func (r *recorder) ReadAtIntent(ctx context.Context, in Intent, p []byte, off int64) (int, error) {
	r.in, r.ctx = append(r.in, in), append(r.ctx, ctx)
	return r.ReadAt(p, off)
}

func (r *recorder) Evict(off, n int64) error {
	r.evicted = append(r.evicted, [2]int64{off, n})
	return nil
}

var (
	_ io.ReaderAt = View{}
	_ Evicter     = View{}
)

// A View reads with its intent and forwards Evict; Evict of a plain reader says
// ErrNotEvictable.
func TestView(t *testing.T) {
	r := &recorder{Reader: bytes.NewReader([]byte("abcdefgh"))}
	v := View{R: r, In: Background}
	buf := make([]byte, 3)
	if _, err := v.ReadAt(buf, 2); err != nil || string(buf) != "cde" {
		t.Fatalf("ReadAt: %q, %v", buf, err)
	}
	if len(r.in) != 1 || r.in[0] != Background || r.ctx[0] == nil {
		t.Fatalf("intents %+v, contexts %v", r.in, r.ctx)
	}
	if v.Size() != 8 {
		t.Fatalf("size %d", v.Size())
	}
	if err := v.Evict(1, 2); err != nil || len(r.evicted) != 1 || r.evicted[0] != [2]int64{1, 2} {
		t.Fatalf("Evict: %v, %v", err, r.evicted)
	}
	if err := Evict(bytes.NewReader(nil), 0, 1); !errors.Is(err, ErrNotEvictable) {
		t.Fatalf("Evict of a reader without a cache: %v", err)
	}
	if err := Evict(r, 5, 1); err != nil || len(r.evicted) != 2 {
		t.Fatalf("Evict of an Evicter: %v, %v", err, r.evicted)
	}
}
