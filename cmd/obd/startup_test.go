package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Every obd command, `obd zfile -x` of a small file included, runs the init of
// every package of ours: they build their buffers, tables, regexps, metric
// descriptors and /proc reads on first use instead (sync.OnceValue), so that
// together they allocate a few KiB at init (288 KiB before: a 256 KiB zero
// buffer, the CRC32C tables, a regexp, 17 Prometheus descriptors). The Go
// runtime's init trace counts the bytes each package's init allocates.
func TestOurPackagesInitCheaply(t *testing.T) {
	cmd := exec.Command(obdBin, "--version")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("obd --version: %v: %s", err, stderr.String())
	}
	line := regexp.MustCompile(`^init (github\.com/obd-project/obd/\S+) @.* clock, (\d+) bytes, (\d+) allocs$`)
	const limit = 16 << 10
	total, seen := 0, 0
	var report strings.Builder
	for _, l := range strings.Split(stderr.String(), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		seen++
		n, _ := strconv.Atoi(m[2])
		total += n
		fmt.Fprintf(&report, "\n  %s: %s bytes, %s allocs", m[1], m[2], m[3])
	}
	if seen == 0 {
		t.Fatalf("no init trace of our packages in:\n%s", stderr.String())
	}
	if total > limit {
		t.Fatalf("our packages allocate %d bytes at init, want at most %d:%s", total, limit, report.String())
	}
}
