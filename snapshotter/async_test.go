package snapshotter

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/errdefs"
)

// gatedDevices holds every Detach until release is closed, then fails it while
// fail is set.
type gatedDevices struct {
	Devices
	release chan struct{}
	fail    atomic.Bool
}

func (g *gatedDevices) Detach(ctx context.Context, id string) error {
	<-g.release
	if g.fail.Load() {
		return errors.New("device busy")
	}
	return g.Devices.Detach(ctx, id)
}

// TestAsyncRemove: with asyncRemove, Remove returns once the metadata is gone, while
// the device detach is still waiting; the device and the directory go in the
// background, and a background failure is retried by Cleanup.
func TestAsyncRemove(t *testing.T) {
	needRoot(t)
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.RwMode = RwDir; c.AsyncRemove = true })
	gate := &gatedDevices{Devices: sn.devs, release: make(chan struct{})}
	sn.devs = gate
	ctx := context.Background()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	if _, err := sn.Prepare(ctx, "c1", "chain1"); err != nil {
		t.Fatal(err)
	}
	id := snapshotID(t, sn, "c1")
	if devs.count() != 1 || !isMountPoint(sn.mountpoint(id)) {
		t.Fatalf("%d devices, want the container's writable device, mounted", devs.count())
	}
	done := make(chan error, 1)
	go func() { done <- sn.Remove(ctx, "c1") }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		close(gate.release)
		t.Fatal("Remove with asyncRemove waited for the device's detach")
	}
	if _, err := sn.Stat(ctx, "c1"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat after Remove: %v, want not found", err)
	}
	if devs.count() != 1 {
		t.Errorf("the device went before its detach was let through")
	}
	// The background detach fails: the directory stays for Cleanup.
	gate.fail.Store(true)
	close(gate.release)
	sn.background.Wait()
	if _, err := os.Stat(sn.snDir(id)); err != nil || devs.count() != 1 {
		t.Fatalf("after a failed background detach: dir %v, %d devices; want both kept", err, devs.count())
	}
	gate.fail.Store(false)
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sn.snDir(id)); !errors.Is(err, os.ErrNotExist) || devs.count() != 0 {
		t.Errorf("after Cleanup: dir %v, %d devices; want both gone", err, devs.count())
	}
}

// TestSyncRemoveKeepsDirOnDetachFailure: without asyncRemove a failed detach fails
// Remove and leaves the directory (and what is mounted in it) for Cleanup.
func TestSyncRemoveKeepsDirOnDetachFailure(t *testing.T) {
	needRoot(t)
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.RwMode = RwDir })
	gate := &gatedDevices{Devices: sn.devs, release: make(chan struct{})}
	close(gate.release)
	sn.devs = gate
	ctx := context.Background()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	if _, err := sn.Prepare(ctx, "c1", "chain1"); err != nil {
		t.Fatal(err)
	}
	id := snapshotID(t, sn, "c1")
	gate.fail.Store(true)
	if err := sn.Remove(ctx, "c1"); err == nil || !strings.Contains(err.Error(), "device busy") {
		t.Fatalf("Remove with a failing detach: %v", err)
	}
	if _, err := os.Stat(sn.snDir(id)); err != nil {
		t.Fatalf("the directory went with its device still attached: %v", err)
	}
	gate.fail.Store(false)
	if err := sn.Cleanup(ctx); err != nil || devs.count() != 0 {
		t.Errorf("Cleanup: %v, %d devices left", err, devs.count())
	}
}
