package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The daemon's download layer directories (<state-dir>/layers) are bounded by
// --download-dir-size: unused ones are removed least recently used first, one a
// device uses never, even when it alone exceeds the bound; it goes once detached.
func TestLayerDirsBounded(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	d := startDaemon(t, dir, "--download-dir-size", "6MiB")
	defer func() {
		if d.cmd.ProcessState == nil { // still running (a failure): detach its device
			d.stop(t)
		}
	}()
	layers := filepath.Join(d.stateDir, "layers")
	mkLayerDir := func(name string, content []byte, age time.Duration) string {
		t.Helper()
		p := filepath.Join(layers, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "overlaybd.commit"), content, 0o644); err != nil {
			t.Fatal(err)
		}
		when := time.Now().Add(-age)
		os.Chtimes(p, when, when)
		return p
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	// The base layer (4.5 MiB) in a layer directory, used by a device.
	base, err := os.ReadFile(extractBase(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	inuse := mkLayerDir("inuse", base, 0)
	hello, _ := filepath.Abs(helloBlob)
	cfg := filepath.Join(dir, "config.v1.json")
	os.WriteFile(cfg, []byte(`{"lowers":[{"dir":"`+inuse+`"},{"file":"`+hello+`"}]}`), 0o644)
	out, err := d.obd(t, "attach", "--frontend", "fuse", "--config", cfg)
	if err != nil {
		t.Fatal(err, out)
	}
	img := firstLine(out)
	if !exists(inuse) {
		t.Fatal("the layer directory of the device being attached was removed")
	}

	// Two unused ones, and the used one the least recently used of all.
	mib := bytes.Repeat([]byte{1}, 1<<20)
	old1 := mkLayerDir("old1", mib, 2*time.Hour)
	old2 := mkLayerDir("old2", mib, time.Hour)
	os.Chtimes(inuse, time.Now().Add(-3*time.Hour), time.Now().Add(-3*time.Hour))
	d.kill()
	d.start(t) // recovers the device, then checks the bound: 6.5 MiB > 6 MiB
	if !exists(inuse) || exists(old1) || !exists(old2) {
		t.Fatalf("after a restart at 6 MiB: inuse %v old1 %v old2 %v; want inuse and old2 only\n%s", exists(inuse), exists(old1), exists(old2), d.logText())
	}

	trash := filepath.Join(layers, ".removing-x")
	os.MkdirAll(trash, 0o755)
	d.kill()
	d.extra = []string{"--download-dir-size", "1MiB"}
	d.start(t)
	if !exists(inuse) || exists(old2) || exists(trash) {
		t.Fatalf("after a restart at 1 MiB: inuse %v old2 %v leftover %v; want inuse only", exists(inuse), exists(old2), exists(trash))
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mountHello(t, img, mnt)
	if out, err := d.obd(t, "detach", img); err != nil {
		t.Fatal(err, out)
	}
	if exists(inuse) {
		t.Error("the layer directory is still there after its device was detached, over the bound")
	}
	if out, _ := d.obd(t, "stats", "--all"); !strings.Contains(out, "layer_dirs_removed") {
		t.Errorf("obd stats has no layer_dirs_removed:\n%s", out)
	}
	if n := strings.Count(d.logText(), "removed unused layer directory"); n != 3 {
		t.Errorf("%d removals logged, want 3", n)
	}
}
