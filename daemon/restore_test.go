package daemon

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/internal/proc"
	"github.com/obd-project/obd/lsmt"
	"go.uber.org/zap/zaptest"
)

// writableImage makes a 1 MiB writable image in dir whose first sector is fill
// and returns its config.
func writableImage(t *testing.T, dir string, fill byte) string {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	data, err := os.Create(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	index, err := os.Create(filepath.Join(dir, "index"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := lsmt.Create(data, index, lsmt.CreateOptions{VirtualSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(bytes.Repeat([]byte{fill}, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	data.Close()
	index.Close()
	cfg := filepath.Join(dir, "config.v1.json")
	if err := os.WriteFile(cfg, []byte(`{"lowers":[],"upper":{"data":"data","index":"index"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Restore recovers the devices it can, one by one, and reports the others
// (failed in List and in their record) instead of giving up or dying: a panic
// while opening one image, a missing config, a ublk device that is gone. A
// record whose PID now belongs to another program (PID reuse) is recovered too.
func TestRestoreContinuesPastFailures(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Getuid() != 0 {
		t.Skip("needs root and /dev/fuse")
	}
	root := t.TempDir()
	stateDir, runDir := filepath.Join(root, "state"), filepath.Join(root, "run")
	m, err := NewManager(Options{StateDir: stateDir, RunDir: runDir, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// A live process that is not obd holds the PID recorded for device 4.
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()

	panicky := filepath.Join(root, "img1", "data")
	recs := []Record{
		{ID: 0, Config: writableImage(t, filepath.Join(root, "img0"), 0xA0)},
		{ID: 1, Config: writableImage(t, filepath.Join(root, "img1"), 0xA1)},
		{ID: 2, Config: filepath.Join(root, "missing", "config.v1.json")},
		{ID: 3, Config: writableImage(t, filepath.Join(root, "img3"), 0xA3), Frontend: FrontendUblk, Path: "/dev/ublkb3", Recovery: true},
		{ID: 4, Config: writableImage(t, filepath.Join(root, "img4"), 0xA4), PID: sleep.Process.Pid},
	}
	for i := range recs {
		r := &recs[i]
		if r.Frontend == "" {
			r.Frontend, r.MountDir = FrontendFUSE, filepath.Join(m.fuseRoot, strconv.Itoa(r.ID))
			r.Path = filepath.Join(r.MountDir, FUSEImageName)
		}
		if err := m.state.save(*r); err != nil {
			t.Fatal(err)
		}
	}
	openImage = func(ctx context.Context, cfg *config.ImageConfig, o image.Options) (*image.Image, error) {
		if cfg.Upper.Data == panicky {
			panic("fake failure while opening the image")
		}
		return image.Open(ctx, cfg, o)
	}
	defer func() { openImage = image.Open }()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.DetachAll()
	states := map[int]Status{}
	for _, s := range m.List() {
		states[s.ID] = s
	}
	for id, want := range map[int]string{0: "live", 1: StateFailed, 2: StateFailed, 3: StateFailed, 4: "live"} {
		s, ok := states[id]
		if !ok || s.State != want {
			t.Errorf("device %d: state %q (listed %v), want %q", id, s.State, ok, want)
			continue
		}
		if (want == StateFailed) != (s.RestoreError != "") {
			t.Errorf("device %d: %s with restore error %q", id, s.State, s.RestoreError)
		}
		t.Logf("device %d: %s %s", id, s.State, s.RestoreError)
	}
	for _, id := range []int{0, 4} {
		b := make([]byte, 512)
		f, err := os.Open(recs[id].Path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(b, 0)
		f.Close()
		if err != nil || b[0] != byte(0xA0+id) {
			t.Errorf("recovered device %d reads %#x, %v", id, b[0], err)
		}
	}
	// The failed record stays, with its error, until detached.
	got, _ := m.state.load()
	if len(got) != 5 {
		t.Fatalf("%d records after Restore, want 5", len(got))
	}
	for _, r := range got {
		if r.ID == 1 && r.RestoreError == "" {
			t.Error("record 1 has no restore error")
		}
		if (r.ID == 0 || r.ID == 4) && (r.PID != os.Getpid() || r.PIDStart != ownStart()) {
			t.Errorf("recovered record %d: pid %d start %d", r.ID, r.PID, r.PIDStart)
		}
	}
	if err := m.Detach("1", false); err != nil {
		t.Fatal("detach of a failed device:", err)
	}
	if _, err := os.Stat(m.state.path(1)); !os.IsNotExist(err) {
		t.Errorf("record of the detached failed device: %v", err)
	}
}

// A recorded PID counts as the device's server only while the same process
// holds it: same start time, or (records without one) the same program.
func TestServedBy(t *testing.T) {
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	pid := sleep.Process.Pid
	start, alive := proc.Start(pid)
	if !alive || start == 0 {
		t.Fatalf("proc.Start(%d) = %d, %v", pid, start, alive)
	}
	for _, c := range []struct {
		pid   int
		start uint64
		want  bool
	}{
		{pid, start, true},
		{pid, start + 1, false}, // PID reused since the record
		{pid, 0, false},         // old record: another program holds the PID
		{os.Getpid(), 0, true},  // old record: this program
		{os.Getpid(), ownStart(), true},
		{0, 0, false},
		{1 << 30, 0, false},
	} {
		if got := servedBy(c.pid, c.start); got != c.want {
			t.Errorf("servedBy(%d, %d) = %v, want %v", c.pid, c.start, got, c.want)
		}
	}
}
