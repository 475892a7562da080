package trace

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const testPoll = 5 * time.Millisecond

func exists(t *testing.T, p string) bool {
	t.Helper()
	_, err := os.Lstat(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func TestRecordUntilLockDeleted(t *testing.T) {
	p := filepath.Join(t.TempDir(), "trace")
	os.WriteFile(p, nil, 0o644)
	if m, _ := DetectMode(p); m != ModeRecord {
		t.Fatalf("mode %v", m)
	}
	rec := NewRecorder(0)
	l := rec.Layer(0, bytes.NewReader(make([]byte, 1<<16)))

	s, err := StartRecording(p, rec)
	if err != nil {
		t.Fatal(err)
	}
	if !exists(t, LockPath(p)) {
		t.Fatal("no lock file after StartRecording")
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(context.Background(), testPoll) }()

	mustRead(t, l, make([]byte, 4096), 0)
	mustRead(t, l, make([]byte, 512), 32768)
	time.Sleep(4 * testPoll)
	select {
	case err := <-done:
		t.Fatalf("recording ended while the lock exists: %v", err)
	default:
	}
	if exists(t, OKPath(p)) {
		t.Fatal(".ok before the lock was deleted")
	}

	os.Remove(LockPath(p))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("recording did not stop after the lock was deleted")
	}
	if !exists(t, OKPath(p)) {
		t.Fatal("no .ok after the dump")
	}
	if exists(t, LockPath(p)) {
		t.Fatal("lock file recreated")
	}
	recs, err := ReadTraceFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !equalRecords(recs, []Record{{OpRead, 0, 4096, 0}, {OpRead, 0, 512, 32768}}) {
		t.Fatalf("trace holds %v", recs)
	}
	if m, _ := DetectMode(p); m != ModeReplayTrace {
		t.Fatalf("mode after recording %v", m)
	}
	// Reads after the stop are not recorded.
	mustRead(t, l, make([]byte, 512), 0)
	if rec.Len() != 2 {
		t.Fatal("recorded after the dump")
	}
}

func TestRecordUntilDeviceClose(t *testing.T) {
	p := filepath.Join(t.TempDir(), "trace")
	os.WriteFile(p, nil, 0o644)
	os.WriteFile(OKPath(p), nil, 0o644) // stale, from an earlier run
	rec := NewRecorder(0)
	mustRead(t, rec.Layer(3, bytes.NewReader(make([]byte, 4096))), make([]byte, 4096), 0)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RecordUntil(ctx, p, rec, time.Hour) }()
	deadline := time.Now().Add(5 * time.Second)
	for !exists(t, LockPath(p)) || exists(t, OKPath(p)) {
		if time.Now().After(deadline) {
			t.Fatal("lock not created / stale .ok not removed")
		}
		time.Sleep(time.Millisecond)
	}
	cancel() // the device closes: dump without waiting for the poll
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("recording did not stop on cancel")
	}
	if !exists(t, OKPath(p)) || exists(t, LockPath(p)) {
		t.Fatal("want .ok and no lock")
	}
	if recs, err := ReadTraceFile(p); err != nil || !equalRecords(recs, []Record{{OpRead, 3, 4096, 0}}) {
		t.Fatalf("trace %v, %v", recs, err)
	}
}

func TestRecordingDumpFailureKeepsLock(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "trace")
	// A non-empty directory where the trace should be: the rename cannot replace it.
	os.Mkdir(p, 0o755)
	os.WriteFile(filepath.Join(p, "x"), nil, 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := RecordUntil(ctx, p, NewRecorder(0), testPoll)
	if err == nil {
		t.Fatal("dump into a directory succeeded")
	}
	if !exists(t, LockPath(p)) || exists(t, OKPath(p)) {
		t.Fatal("a failed dump must keep the lock and create no .ok")
	}
}

func TestStartRecordingErrors(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing-dir", "trace")
	if _, err := StartRecording(p, NewRecorder(0)); err == nil {
		t.Fatal("lock created in a missing directory")
	}
}
