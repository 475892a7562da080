package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMisspelledConfigKey: a misspelled config.v1.json key is a warning naming the
// right key, in `obd attach` output and in the daemon's log, and the attach says it
// read a config file.
func TestMisspelledConfigKey(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	cfg := helloConfig(t, dir, `,"accelerationLayr":false`)
	d := startDaemon(t, dir)
	defer d.stop(t)
	out, err := d.obd(t, "attach", cfg)
	if err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	want := `unknown key "accelerationLayr" (did you mean "accelerationLayer"?)`
	if !strings.Contains(out, want) || !strings.Contains(out, "config file "+cfg) {
		t.Errorf("attach output lacks %q or %q:\n%s", want, "config file "+cfg, out)
	}
	if !strings.Contains(d.logText(), want) {
		t.Errorf("daemon log lacks %q:\n%s", want, d.logText())
	}
}

// TestHalfUpperRefused: an upper with an index but no data (or a non-sparse data
// file without its index) would come up read-only; attach refuses it and
// writes the reason to resultFile.
func TestHalfUpperRefused(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	data, index := filepath.Join(dir, "data"), filepath.Join(dir, "index")
	mustRun(t, bin("obd"), "create", data, index, "64MiB")
	for name, upper := range map[string]string{
		"index without data":        `,"upper":{"index":"` + index + `"}`,
		"non-sparse data, no index": `,"upper":{"data":"` + data + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			sub := t.TempDir()
			cfg := helloConfig(t, sub, upper)
			out, err := run(t, 2*time.Minute, bin("obd"), "attach", "--foreground", "--frontend", "fuse", "--run-dir", filepath.Join(sub, "run"), cfg)
			if err == nil {
				t.Fatalf("attach of a half upper succeeded:\n%s", out)
			}
			if !strings.Contains(out, "upper") {
				t.Errorf("error does not name the upper:\n%s", out)
			}
			if b, _ := os.ReadFile(filepath.Join(sub, "result")); !strings.HasPrefix(string(b), "failed:") && name != "index without data" {
				t.Errorf("result file: %q", b)
			}
		})
	}
}
