package fuseblk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/blockdev"
)

// memTarget is a RAM-backed blockdev.Target that counts calls and can fail reads of
// one range.
type memTarget struct {
	mu       sync.RWMutex
	data     []byte
	readOnly bool

	failOff, failLen int64 // reads overlapping this range fail

	flushes, discards, discardBytes, writes atomic.Int64
}

func newMemTarget(size int64) *memTarget { return &memTarget{data: make([]byte, size)} }

func (m *memTarget) Size() int64    { return int64(len(m.data)) }
func (m *memTarget) ReadOnly() bool { return m.readOnly }

func (m *memTarget) check(off int64, n int) error {
	if off%512 != 0 || n%512 != 0 {
		return fmt.Errorf("memTarget: unaligned request off=%d len=%d", off, n)
	}
	if off < 0 || off+int64(n) > m.Size() {
		return fmt.Errorf("memTarget: request off=%d len=%d beyond %d", off, n, m.Size())
	}
	return nil
}

var errInjected = errors.New("memTarget: injected read failure")

func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	if err := m.check(off, len(p)); err != nil {
		return 0, err
	}
	if m.failLen > 0 && off < m.failOff+m.failLen && off+int64(len(p)) > m.failOff {
		return 0, errInjected
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return copy(p, m.data[off:]), nil
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if m.readOnly {
		return 0, blockdev.ErrReadOnly
	}
	if err := m.check(off, len(p)); err != nil {
		return 0, err
	}
	m.writes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

// bytes copies [off, off+n) under the lock: the FUSE server writes from other
// goroutines, ordered only through the kernel, which the race detector cannot see.
func (m *memTarget) bytes(off, n int64) []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return bytes.Clone(m.data[off : off+n])
}

func (m *memTarget) Flush() error { m.flushes.Add(1); return nil }

func (m *memTarget) Discard(off, length int64) error {
	if m.readOnly {
		return blockdev.ErrReadOnly
	}
	if err := m.check(off, int(length)); err != nil {
		return err
	}
	m.discards.Add(1)
	m.discardBytes.Add(length)
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}

// plainTarget hides memTarget's optional capabilities (no Discarder).
type plainTarget struct{ m *memTarget }

func (p plainTarget) ReadAt(b []byte, off int64) (int, error)  { return p.m.ReadAt(b, off) }
func (p plainTarget) WriteAt(b []byte, off int64) (int, error) { return p.m.WriteAt(b, off) }
func (p plainTarget) Flush() error                             { return p.m.Flush() }
func (p plainTarget) Size() int64                              { return p.m.Size() }

// requireRoot skips unless the FUSE/loop tests can run, naming what is missing.
func requireRoot(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fuseblk tests need root (mount(2) without fusermount)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("fuseblk tests need /dev/fuse: %v", err)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("fuseblk test needs %s in PATH", tool)
		}
	}
}

// testCtx bounds a test so a FUSE deadlock fails it instead of hanging CI.
func testCtx(t testing.TB, d time.Duration) context.Context {
	deadline := time.Now().Add(d)
	if tt, ok := t.(*testing.T); ok {
		if dl, ok := tt.Deadline(); ok && dl.Add(-5*time.Second).Before(deadline) {
			deadline = dl.Add(-5 * time.Second)
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// run runs a command under ctx and fails the test with its output on error.
func run(t testing.TB, ctx context.Context, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// within runs f on the test goroutine (so it may call t.Fatal) under a watchdog: if
// f does not return before ctx ends, the test binary panics with a goroutine dump
// instead of hanging CI on a FUSE deadlock.
func within(t testing.TB, ctx context.Context, what string, f func()) {
	t.Helper()
	dl, _ := ctx.Deadline()
	watchdog := time.AfterFunc(time.Until(dl), func() {
		panic(fmt.Sprintf("%s: %s: no return before the deadline (FUSE deadlock?)", t.Name(), what))
	})
	defer watchdog.Stop()
	f()
}

// mountT mounts t in a fresh temp dir and closes it (bounded) at test end.
func mountT(t testing.TB, tgt blockdev.Target, opts *Options) *Mounted {
	t.Helper()
	dir := t.TempDir()
	m, err := Mount(dir, "disk", tgt, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		done := make(chan error, 1)
		go func() { done <- m.Close() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Close: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Close of %s hung", m.Path())
		}
	})
	return m
}

// tempMount creates a mount point for an ext4 file system and unmounts it at test end
// if the test left it mounted.
func tempMount(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() {
		if mnt, ok, _ := mountAt(dir); ok && mnt.fsType == "ext4" {
			_ = exec.Command("umount", dir).Run()
		}
	})
	return dir
}

// sampleFiles writes files of assorted sizes into dir and returns name → sha256.
func sampleFiles(t testing.TB, dir string, seed uint64) map[string]string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	sums := map[string]string{}
	for i, size := range []int{0, 1, 4095, 4096, 300 << 10, 5<<20 + 123} {
		buf := make([]byte, size)
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("f%d.bin", i)
		if err := os.WriteFile(filepath.Join(dir, name), buf, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(buf)
		sums[name] = hex.EncodeToString(s[:])
	}
	return sums
}

func checkFiles(t testing.TB, dir string, sums map[string]string) {
	t.Helper()
	for name, want := range sums {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		s := sha256.Sum256(b)
		if got := hex.EncodeToString(s[:]); got != want {
			t.Fatalf("%s: sha256 %s, want %s", name, got, want)
		}
	}
}

// losetup attaches path to a free loop device and detaches it at test end if the
// test did not.
func losetup(t testing.TB, ctx context.Context, path string, extra ...string) string {
	t.Helper()
	dev := run(t, ctx, "losetup", append(append([]string{"--find", "--show"}, extra...), path)...)
	t.Cleanup(func() {
		if b, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/backing_file"); err == nil &&
			bytes.HasPrefix(b, []byte(path)) {
			_ = exec.Command("losetup", "-d", dev).Run()
		}
	})
	return dev
}
