package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestWritableUpperIsExclusive attaches a writable upper through the daemon, then
// makes the usual mistakes with it: attach it again (through the daemon and in the
// foreground), seal it and commit it while it is served. Each fails at once naming
// the daemon's pid and device, the second config's resultFile says failed, and the
// upper still works (and seals) after the detach.
func TestWritableUpperIsExclusive(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	data, index := filepath.Join(dir, "up.data"), filepath.Join(dir, "up.index")
	mustRun(t, bin("obd"), "create", data, index, "256M")
	cfg := filepath.Join(dir, "rw.json")
	os.WriteFile(cfg, []byte(`{"lowers":[],"upper":{"data":"up.data","index":"up.index"},"resultFile":"result"}`), 0o644)
	cfg2 := filepath.Join(dir, "rw2.json")
	os.WriteFile(cfg2, []byte(`{"lowers":[],"upper":{"data":"up.data","index":"up.index"},"resultFile":"result2"}`), 0o644)
	d := startDaemon(t, dir)
	defer d.stop(t)

	out, err := d.obd(t, "attach", "--frontend", "fuse", "--config", cfg)
	if err != nil {
		t.Fatalf("attach: %v\n%s\n%s", err, out, d.logText())
	}
	img := firstLine(out)
	daemonPID := "pid " + strconv.Itoa(d.cmd.Process.Pid)

	start := time.Now()
	out, err = d.obd(t, "attach", "--frontend", "fuse", "--config", cfg2)
	if err == nil || !strings.Contains(out, "in use by "+daemonPID+" (this process)") || !strings.Contains(out, "obd device") {
		t.Errorf("second attach of the same upper: err %v\n%s", err, out)
	}
	if res, _ := os.ReadFile(filepath.Join(dir, "result2")); !strings.HasPrefix(string(res), "failed:") {
		t.Errorf("second attach's result file: %q", res)
	}
	if res, _ := os.ReadFile(filepath.Join(dir, "result")); string(res) != "success" {
		t.Errorf("first attach's result file: %q", res)
	}
	out, err = run(t, time.Minute, bin("obd"), "attach", "--foreground", "--frontend", "fuse", "--run-dir", filepath.Join(dir, "fgrun"), "--config", cfg2)
	if err == nil || !strings.Contains(out, daemonPID) {
		t.Errorf("foreground attach of a served upper: err %v\n%s", err, out)
	}
	for _, args := range [][]string{{"seal", data, index}, {"commit", data, index, filepath.Join(dir, "out")}} {
		out, err := run(t, time.Minute, bin("obd"), args...)
		if err == nil || !strings.Contains(out, daemonPID) || !strings.Contains(out, "obd device") {
			t.Errorf("obd %v of a served upper: err %v\n%s", args, err, out)
		}
	}
	if time.Since(start) > time.Minute {
		t.Errorf("the refusals took %v: they must fail at once", time.Since(start))
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Error("a refused commit wrote its output")
	}
	// The served device still works.
	mustRun(t, "mkfs.ext4", "-q", "-F", img)
	if out, err := d.obd(t, "detach", img); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	mustRun(t, bin("obd"), "seal", data, index)
	mustRun(t, "e2fsck", "-fn", mustExport(t, dir, data))
}

func mustExport(t *testing.T, dir, layer string) string {
	t.Helper()
	raw := filepath.Join(dir, "export.raw")
	mustRun(t, bin("obd"), "export", "-o", raw, layer)
	return raw
}

// TestAttachRefusesMismatchedUpper: an upper whose data and index files belong to two
// layers fails the attach before "success" is written, naming both files.
func TestAttachRefusesMismatchedUpper(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	mustRun(t, bin("obd"), "create", filepath.Join(dir, "a.data"), filepath.Join(dir, "a.index"), "64M")
	mustRun(t, bin("obd"), "create", filepath.Join(dir, "b.data"), filepath.Join(dir, "b.index"), "64M")
	cfg := filepath.Join(dir, "rw.json")
	os.WriteFile(cfg, []byte(`{"lowers":[],"upper":{"data":"a.data","index":"b.index"},"resultFile":"result"}`), 0o644)
	d := startDaemon(t, dir)
	defer d.stop(t)
	out, err := d.obd(t, "attach", "--frontend", "fuse", "--config", cfg)
	if err == nil || !strings.Contains(out, "a.data") || !strings.Contains(out, "b.index") {
		t.Fatalf("attach of a mismatched upper: err %v\n%s", err, out)
	}
	res, _ := os.ReadFile(filepath.Join(dir, "result"))
	if !strings.HasPrefix(string(res), "failed:") || !strings.Contains(string(res), "different layers") {
		t.Fatalf("result file: %q", res)
	}
	if list, _ := d.obd(t, "list"); strings.Contains(list, "fuse") {
		t.Fatalf("a device was left behind:\n%s", list)
	}
}
