package trace

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDecide(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var bin bytes.Buffer
	if err := WriteTrace(&bin, []Record{{Op: OpRead, Layer: 0, Count: 8, Offset: 4096}}); err != nil {
		t.Fatal(err)
	}
	empty := file("empty", nil)
	tr := file("trace", bin.Bytes())
	list := file("list", []byte("/etc/hostname\n"))
	missing := filepath.Join(dir, "missing")
	run := filepath.Join(dir, "run-record") // run-time paths need not exist yet

	for _, tc := range []struct {
		name string
		src  Sources
		want Plan
		err  string
	}{
		{"nothing", Sources{}, Plan{}, ""},
		{"run-time record", Sources{Record: run}, Plan{ModeRecord, run}, ""},
		{"recordTracePath empty: record", Sources{Configured: empty}, Plan{ModeRecord, empty}, ""},
		{"recordTracePath trace: replay", Sources{Configured: tr}, Plan{ModeReplayTrace, tr}, ""},
		{"recordTracePath file list: replay", Sources{Configured: list}, Plan{ModeReplayFileList, list}, ""},
		{"recordTracePath missing: nothing", Sources{Configured: missing}, Plan{}, ""},
		{"recordTracePath a directory", Sources{Configured: dir}, Plan{}, "recordTracePath: trace: " + dir + " is not a regular file"},
		{"recording wins over a prefetch", Sources{Record: run, Prefetch: tr}, Plan{ModeRecord, run}, ""},
		{"recording wins over the acceleration layer", Sources{Record: run, Acceleration: tr}, Plan{ModeRecord, run}, ""},
		{"recordTracePath recording wins over the acceleration layer", Sources{Configured: empty, Acceleration: tr}, Plan{ModeRecord, empty}, ""},
		{"run-time record wins over recordTracePath", Sources{Record: run, Configured: empty}, Plan{ModeRecord, run}, ""},
		{"prefetch wins over the acceleration layer", Sources{Prefetch: list, Acceleration: tr}, Plan{ModeReplayFileList, list}, ""},
		{"prefetch wins over recordTracePath", Sources{Prefetch: list, Configured: tr}, Plan{ModeReplayFileList, list}, ""},
		{"acceleration layer wins over recordTracePath", Sources{Acceleration: tr, Configured: list}, Plan{ModeReplayTrace, tr}, ""},
		{"acceleration layer without a trace", Sources{Acceleration: missing}, Plan{}, ""},
		{"acceleration layer without a trace hides recordTracePath", Sources{Acceleration: missing, Configured: tr}, Plan{}, ""},
		{"prefetch of a trace", Sources{Prefetch: tr}, Plan{ModeReplayTrace, tr}, ""},
		{"prefetch of an empty file: the trace reader reports it", Sources{Prefetch: empty}, Plan{ModeReplayTrace, empty}, ""},
		{"prefetch of a directory: the trace reader reports it", Sources{Prefetch: dir}, Plan{ModeReplayTrace, dir}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decide(tc.src)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Decide(%+v) = %+v, %v; want error %q", tc.src, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Decide(%+v) = %+v, %v; want %+v", tc.src, got, err, tc.want)
			}
		})
	}
}

func TestRecoverRecording(t *testing.T) {
	p := filepath.Join(t.TempDir(), "trace")
	if got := RecoverRecording(p); got != RecoveryLost {
		t.Fatalf("no lock, no .ok: %v, want lost", got)
	}
	if err := os.WriteFile(OKPath(p), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := RecoverRecording(p); got != RecoveryDone {
		t.Fatalf(".ok: %v, want done", got)
	}
	if err := os.WriteFile(LockPath(p), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := RecoverRecording(p); got != RecoveryResume {
		t.Fatalf(".lock (and a stale .ok): %v, want resume", got)
	}
}
