package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStateDirRoundTrip(t *testing.T) {
	d := stateDir(t.TempDir())
	recs := []Record{
		{ID: 0, Config: "/a/config.v1.json", Frontend: FrontendUblk, Path: "/dev/ublkb0", Recovery: true, PID: 42, Created: time.Unix(1, 0).UTC()},
		{ID: 7, Config: "/b/config.v1.json", Frontend: FrontendFUSE, Path: "/run/obd/fuse/7/image", MountDir: "/run/obd/fuse/7",
			TraceOptions: TraceOptions{RecordTrace: "/t/app.trace"}, TraceRecovery: TraceRecoveryResumed, TraceNote: "n"},
	}
	for _, r := range recs {
		if err := d.save(r); err != nil {
			t.Fatal(err)
		}
	}
	// A corrupt record is reported and dropped, never fatal.
	os.WriteFile(filepath.Join(string(d), "dev-9.json"), []byte("{not json"), 0o600)
	got, errs := d.load()
	if len(got) != 2 || len(errs) != 1 {
		t.Fatalf("load: %d records, errors %v", len(got), errs)
	}
	if got[0] != recs[0] || got[1] != recs[1] {
		t.Fatalf("load: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(string(d), "dev-9.json")); !os.IsNotExist(err) {
		t.Error("corrupt record not removed")
	}
	if err := d.remove(0); err != nil {
		t.Fatal(err)
	}
	if err := d.remove(0); err != nil {
		t.Fatal("second remove:", err)
	}
	if got, _ := d.load(); len(got) != 1 || got[0].ID != 7 {
		t.Fatalf("after remove: %+v", got)
	}
}

func TestParseFrontend(t *testing.T) {
	for in, want := range map[string]Frontend{"": FrontendAuto, "auto": FrontendAuto, "ublk": FrontendUblk, "fuse": FrontendFUSE} {
		if got, err := ParseFrontend(in); err != nil || got != want {
			t.Errorf("ParseFrontend(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseFrontend("nbd"); err == nil {
		t.Error("nbd accepted")
	}
}

func TestReserveIDSkipsUsed(t *testing.T) {
	m, err := NewManager(Options{StateDir: t.TempDir(), RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m.state.save(Record{ID: 0})
	a, err := m.reserveID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := m.reserveID()
	if a == 0 || b == 0 || a == b {
		t.Fatalf("ids %d, %d: want distinct and not 0 (recorded)", a, b)
	}
	m.release(a)
	if c, _ := m.reserveID(); c != a {
		t.Fatalf("released id %d not reused (got %d)", a, c)
	}
}

// TestRunDirOwner: a second daemon on a run dir fails naming it until the first
// stops; foreground managers mount under their own directory.
func TestRunDirOwner(t *testing.T) {
	run := t.TempDir()
	a, err := NewManager(Options{StateDir: t.TempDir(), RunDir: run})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewManager(Options{StateDir: t.TempDir(), RunDir: run}); err == nil || !strings.Contains(err.Error(), "run dir "+run+" is taken") {
		t.Fatalf("second daemon on %s: %v", run, err)
	}
	fg, err := NewManager(Options{RunDir: run})
	if err != nil {
		t.Fatal(err)
	}
	if fg.fuseRoot == a.fuseRoot || filepath.Dir(fg.fuseRoot) != a.fuseRoot {
		t.Fatalf("foreground mounts in %s, the daemon in %s", fg.fuseRoot, a.fuseRoot)
	}
	if err := a.Stop(StopOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.reserveID(); err == nil {
		t.Error("a stopped manager reserved a device id")
	}
	if _, err := NewManager(Options{StateDir: t.TempDir(), RunDir: run}); err != nil {
		t.Fatalf("daemon after the first stopped: %v", err)
	}
}
