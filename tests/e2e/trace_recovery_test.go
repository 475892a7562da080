package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/daemon"
	"github.com/obd-project/obd/trace"
)

// Run-time trace options survive a daemon crash: a recording whose lock is still
// there resumes (and its dump then holds the reads made after the restart), one
// whose lock was deleted while no daemon ran is reported lost, a dumped one is left
// alone, and a prefetch replays again.
func TestTraceOptionsSurviveDaemonRestart(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	cfg := helloConfig(t, dir, "")
	d := startDaemon(t, dir)
	defer d.stop(t)
	tr1, tr2 := filepath.Join(dir, "a.trace"), filepath.Join(dir, "b.trace")
	attach := func(args ...string) string {
		t.Helper()
		out, err := d.obd(t, append([]string{"attach", "--frontend", "fuse", "--config", cfg}, args...)...)
		if err != nil {
			t.Fatalf("attach %v: %v\n%s", args, err, out)
		}
		return firstLine(out)
	}
	list := func() map[string]daemon.Status {
		t.Helper()
		out, err := d.obd(t, "list", "--json")
		if err != nil {
			t.Fatalf("list: %v\n%s", err, out)
		}
		var sts []daemon.Status
		if err := json.Unmarshal([]byte(out), &sts); err != nil {
			t.Fatalf("list --json: %v\n%s", err, out)
		}
		m := map[string]daemon.Status{}
		for _, s := range sts {
			m[s.Path] = s
		}
		return m
	}
	replays := func() int { return strings.Count(d.logText(), "trace replayed") }
	waitReplays := func(n int) {
		t.Helper()
		for i := 0; i < 200 && replays() < n; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		if got := replays(); got != n {
			t.Fatalf("%d trace replays in the daemon log, want %d:\n%s", got, n, d.logText())
		}
	}

	a := attach("--record-trace", tr1)
	b := attach("--record-trace", tr2)
	d.kill()
	// The user asks b's recording to stop while no daemon runs: nothing can dump it.
	if err := os.Remove(trace.LockPath(tr2)); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	l := list()
	if s := l[a]; s.RecordTrace != tr1 || s.TraceRecovery != daemon.TraceRecoveryResumed {
		t.Errorf("device %s after restart: recordTrace %q, traceRecovery %q; want %s, resumed", a, s.RecordTrace, s.TraceRecovery, tr1)
	}
	if s := l[b]; s.TraceRecovery != daemon.TraceRecoveryLost || !strings.Contains(s.TraceNote, "no trace written") {
		t.Errorf("device %s after restart: traceRecovery %q, note %q; want lost", b, s.TraceRecovery, s.TraceNote)
	}
	if !strings.Contains(d.logText(), "recording lost in a daemon restart") {
		t.Error("the lost recording is not in the daemon log")
	}
	if out, _ := d.obd(t, "list"); !strings.Contains(out, "record (resumed)") || !strings.Contains(out, "record (lost)") {
		t.Errorf("obd list does not show the trace recovery:\n%s", out)
	}

	// The resumed recording records the reads made after the restart.
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mountHello(t, a, mnt)
	if err := os.Remove(trace.LockPath(tr1)); err != nil {
		t.Fatal("resumed recording has no lock:", err)
	}
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(trace.OKPath(tr1)); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	recs, err := trace.ReadTraceFile(tr1)
	if err != nil || len(recs) == 0 {
		t.Fatalf("resumed recording dumped %d records, %v\n%s", len(recs), err, d.logText())
	}
	if _, err := os.Stat(trace.OKPath(tr2)); err == nil {
		t.Error("lost recording has a .ok")
	}

	n := replays()
	c := attach("--prefetch", tr1)
	waitReplays(n + 1)
	d.kill()
	d.start(t)
	waitReplays(n + 2)
	l = list()
	if s := l[c]; s.Prefetch != tr1 || s.TraceRecovery != daemon.TraceRecoveryReplayed {
		t.Errorf("device %s after restart: prefetch %q, traceRecovery %q", c, s.Prefetch, s.TraceRecovery)
	}
	if s := l[a]; s.TraceRecovery != daemon.TraceRecoveryDone {
		t.Errorf("device %s (dumped before the restart): traceRecovery %q, want done", a, s.TraceRecovery)
	}
	if got, err := trace.ReadTraceFile(tr1); err != nil || len(got) != len(recs) {
		t.Errorf("a dumped trace changed across a restart: %d records, %v; want %d", len(got), err, len(recs))
	}
}
