package fuseblk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const imageSize = 64 << 20

// TestReadOnlyExt4 serves an mkfs.ext4 image from RAM read-only, loop-mounts the
// FUSE file and checks the files' contents.
func TestReadOnlyExt4(t *testing.T) {
	requireRoot(t, "mkfs.ext4", "mount", "umount")
	ctx := testCtx(t, 2*time.Minute)
	src := t.TempDir()
	sums := sampleFiles(t, src, 1)
	img := filepath.Join(t.TempDir(), "ext4.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, imageSize); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "mkfs.ext4", "-q", "-F", "-d", src, img)
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	tgt := &memTarget{data: data, readOnly: true}

	m := mountT(t, tgt, nil)
	st, err := os.Stat(m.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != imageSize || st.Mode().Perm() != 0o400 || !st.Mode().IsRegular() || !m.ReadOnly() {
		t.Fatalf("file %s: size %d mode %v, want %d -r--------", m.Path(), st.Size(), st.Mode(), imageSize)
	}
	if _, err := os.OpenFile(m.Path(), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open for writing: %v, want EROFS", err)
	}

	mnt := tempMount(t)
	run(t, ctx, "mount", "-o", "loop,ro", "-t", "ext4", m.Path(), mnt)
	within(t, ctx, "reading files", func() { checkFiles(t, mnt, sums) })
	run(t, ctx, "umount", mnt)
	if tgt.writes.Load() != 0 {
		t.Fatalf("%d writes reached a read-only target", tgt.writes.Load())
	}
}

// TestWritableExt4 formats, fills, trims and re-reads a RAM target through a loop
// device on the FUSE file, remounting FUSE in between so data must come from the
// Target rather than the page cache.
func TestWritableExt4(t *testing.T) {
	requireRoot(t, "mkfs.ext4", "mount", "umount", "losetup", "fstrim")
	// Buffered loop I/O goes through the FUSE page cache; --direct-io=on bypasses it
	// (no double caching) and must work as well.
	t.Run("buffered", func(t *testing.T) { testWritableExt4(t) })
	t.Run("loop-direct-io", func(t *testing.T) { testWritableExt4(t, "--direct-io=on") })
}

func testWritableExt4(t *testing.T, losetupArgs ...string) {
	ctx := testCtx(t, 3*time.Minute)
	tgt := newMemTarget(imageSize)
	src := t.TempDir()
	sums := sampleFiles(t, src, 2)
	mnt := tempMount(t)

	m := mountT(t, tgt, nil)
	if m.ReadOnly() {
		t.Fatal("writable target mounted read-only")
	}
	dev := losetup(t, ctx, m.Path(), losetupArgs...)
	run(t, ctx, "mkfs.ext4", "-q", "-F", dev)
	run(t, ctx, "mount", dev, mnt)
	for name := range sums {
		run(t, ctx, "cp", filepath.Join(src, name), filepath.Join(mnt, name))
	}
	flushesBefore := tgt.flushes.Load()
	run(t, ctx, "sync", "-f", mnt)
	if tgt.flushes.Load() == flushesBefore {
		t.Error("sync did not reach Target.Flush")
	}

	// fstrim reaches Discard when the loop device advertises discard.
	dmb, _ := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/queue/discard_max_bytes")
	if strings.TrimSpace(string(dmb)) != "0" && len(dmb) > 0 {
		before := tgt.discards.Load()
		run(t, ctx, "fstrim", mnt)
		if tgt.discards.Load() == before {
			t.Errorf("fstrim on %s (discard_max_bytes %s) did not reach Discard", dev, strings.TrimSpace(string(dmb)))
		}
	} else {
		t.Logf("%s does not pass discards through; fstrim not checked", dev)
	}
	run(t, ctx, "umount", mnt)
	run(t, ctx, "losetup", "-d", dev)
	within(t, ctx, "Close", func() {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})

	// A fresh FUSE mount of the same Target: the files must be there.
	m2 := mountT(t, tgt, &Options{ReadOnly: true})
	run(t, ctx, "mount", "-o", "loop,ro", "-t", "ext4", m2.Path(), mnt)
	within(t, ctx, "reading files", func() { checkFiles(t, mnt, sums) })
	run(t, ctx, "umount", mnt)
}

// TestReadErrorRange: reads overlapping a failing range get EIO, others succeed.
func TestReadErrorRange(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t, time.Minute)
	tgt := newMemTarget(imageSize)
	for i := range tgt.data {
		tgt.data[i] = byte(i / 512)
	}
	tgt.failOff, tgt.failLen = 32<<20, 64<<10
	var (
		mu       sync.Mutex
		reported []string
	)
	m := mountT(t, tgt, &Options{OnIOError: func(op string, off, n int64, err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, fmt.Sprintf("%s@%d+%d: %v", op, off, n, err))
	}})
	f, err := os.Open(m.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	within(t, ctx, "reads", func() {
		buf := make([]byte, 4096)
		if _, err := f.ReadAt(buf, tgt.failOff+8192); !errors.Is(err, syscall.EIO) {
			t.Errorf("read in failing range: %v, want EIO", err)
		}
		for _, off := range []int64{0, 16 << 20, tgt.failOff + tgt.failLen + 1<<20, imageSize - 4096} {
			if _, err := f.ReadAt(buf, off); err != nil {
				t.Errorf("read at %d: %v", off, err)
			} else if !bytes.Equal(buf, tgt.bytes(off, 4096)) {
				t.Errorf("read at %d: wrong bytes", off)
			}
		}
	})
	mu.Lock()
	if len(reported) == 0 || !strings.Contains(reported[0], errInjected.Error()) {
		t.Errorf("OnIOError reports: %q", reported)
	}
	mu.Unlock()
	// A separate process reading the range fails too.
	out, err := exec.CommandContext(ctx, "dd", "if="+m.Path(), "of=/dev/null", "bs=4096", "count=1",
		fmt.Sprintf("skip=%d", tgt.failOff/4096)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Input/output error") {
		t.Errorf("dd over the failing range: %v %s", err, out)
	}
}

// TestFileSemantics checks byte-level behaviour of the FUSE file itself.
func TestFileSemantics(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t, time.Minute)
	tgt := newMemTarget(1 << 20)
	m := mountT(t, tgt, nil)
	f, err := os.OpenFile(m.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	within(t, ctx, "file operations", func() {
		// Unaligned write: read-modify-write of partial sectors.
		if _, err := f.WriteAt([]byte("hello, sector boundary"), 500); err != nil {
			t.Fatal(err)
		}
		if got := string(tgt.bytes(500, 22)); got != "hello, sector boundary" {
			t.Fatalf("target holds %q", got)
		}
		buf := make([]byte, 22)
		if _, err := f.ReadAt(buf, 500); err != nil || string(buf) != "hello, sector boundary" {
			t.Fatalf("read back %q, %v", buf, err)
		}
		// Writing at the end fails (a device cannot grow); reading there is EOF.
		if _, err := f.WriteAt([]byte{1}, 1<<20); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("write at end: %v, want ENOSPC", err)
		}
		if n, err := f.ReadAt(buf, 1<<20); n != 0 {
			t.Fatalf("read at end: %d, %v", n, err)
		}
		if err := f.Truncate(4096); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("truncate: %v, want EPERM", err)
		}
		flushes := tgt.flushes.Load()
		if err := f.Sync(); err != nil || tgt.flushes.Load() != flushes+1 {
			t.Fatalf("fsync: %v, flushes %d→%d", err, flushes, tgt.flushes.Load())
		}
		// Punch an unaligned hole: partial sectors are written, the middle discarded.
		ones := bytes.Repeat([]byte{0xff}, 8192)
		if _, err := f.WriteAt(ones, 8192); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 8192+100, 2000); err != nil {
			t.Fatal(err)
		}
		// [8292, 10292): sectors [8704, 10240) are discarded, the ends written.
		if tgt.discards.Load() != 1 || tgt.discardBytes.Load() != 1536 {
			t.Fatalf("discards %d of %d bytes, want 1 of 1536", tgt.discards.Load(), tgt.discardBytes.Load())
		}
		want := bytes.Clone(ones)
		clear(want[100:2100])
		got := make([]byte, 8192)
		if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after punch (through page cache): %v", err)
		}
		if !bytes.Equal(tgt.bytes(8192, 8192), want) {
			t.Fatal("after punch: target content wrong")
		}
		if err := unix.Fallocate(fd, 0, 0, 4096); err != nil {
			t.Fatalf("plain fallocate: %v", err)
		}
		if err := unix.Fallocate(fd, 0, 0, 2<<20); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("fallocate past end: %v, want ENOSPC", err)
		}
	})
}

// TestZeroRangeWithoutDiscard: ZERO_RANGE on a Target without Discarder or
// ZeroWriter writes zeros; PUNCH_HOLE is refused.
func TestZeroRangeWithoutDiscard(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t, time.Minute)
	mem := newMemTarget(4 << 20)
	for i := range mem.data {
		mem.data[i] = 0xaa
	}
	m := mountT(t, plainTarget{mem}, nil)
	f, err := os.OpenFile(m.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	within(t, ctx, "fallocate", func() {
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 1000, 3<<20)
		if errors.Is(err, syscall.EOPNOTSUPP) {
			t.Skip("this kernel's FUSE does not forward FALLOC_FL_ZERO_RANGE")
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := mem.bytes(999, 3<<20+2); !bytes.Equal(got[1:3<<20+1], make([]byte, 3<<20)) || got[0] != 0xaa || got[3<<20+1] != 0xaa {
			t.Fatal("ZERO_RANGE did not zero exactly its range")
		}
		err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
		if !errors.Is(err, syscall.EOPNOTSUPP) {
			t.Fatalf("punch hole without Discarder: %v, want EOPNOTSUPP", err)
		}
	})
}

// TestReadOnlyTarget: a read-only target rejects writes even through an fd that
// was opened before (the Target's ErrReadOnly also maps to EROFS).
func TestReadOnlyOption(t *testing.T) {
	requireRoot(t)
	tgt := newMemTarget(1 << 20)
	m := mountT(t, tgt, &Options{ReadOnly: true})
	if _, err := os.OpenFile(m.Path(), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open rw: %v, want EROFS", err)
	}
	if f, err := os.Open(m.Path()); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
}

// TestCloseWithLoopAttached: an idle loop device is detached by Close; a mounted
// one makes Close fail naming it, and Close succeeds once it is unmounted.
func TestCloseWithLoopAttached(t *testing.T) {
	requireRoot(t, "losetup", "mkfs.ext4", "mount", "umount")
	ctx := testCtx(t, 2*time.Minute)
	tgt := newMemTarget(imageSize)

	m := mountT(t, tgt, nil)
	dev := losetup(t, ctx, m.Path())
	within(t, ctx, "Close with idle loop", func() {
		if err := m.Close(); err != nil {
			t.Fatalf("Close with idle %s: %v", dev, err)
		}
	})
	if l, _ := loopsBackedBy(m.Path()); len(l) != 0 {
		t.Fatalf("loop devices left: %+v", l)
	}
	if _, ok, _ := mountAt(m.Dir()); ok {
		t.Fatal("still mounted after Close")
	}

	m2 := mountT(t, tgt, nil)
	dev = losetup(t, ctx, m2.Path())
	run(t, ctx, "mkfs.ext4", "-q", "-F", dev)
	mnt := tempMount(t)
	run(t, ctx, "mount", dev, mnt)
	within(t, ctx, "Close with mounted loop", func() {
		err := m2.Close()
		if err == nil || !strings.Contains(err.Error(), dev) || !strings.Contains(err.Error(), "mounted at "+mnt) {
			t.Fatalf("Close with %s mounted: %v, want an error naming it", dev, err)
		}
	})
	// The mount still serves after the refused Close.
	if err := os.WriteFile(filepath.Join(mnt, "after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "umount", mnt)
	within(t, ctx, "Close after umount", func() {
		if err := m2.Close(); err != nil {
			t.Fatal(err)
		}
		if err := m2.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

// TestCleanupStale: a mount left by a killed process (ENOTCONN) is removed by
// CleanupStale, and Mount at the same dir works afterwards.
func TestCleanupStale(t *testing.T) {
	requireRoot(t, "losetup")
	ctx := testCtx(t, time.Minute)
	dir := t.TempDir()
	cmd := startHelper(t, ctx, dir, "kill")
	// An idle loop device over the file must not keep the stale mount alive.
	dev := losetup(t, ctx, filepath.Join(dir, "disk"))
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	if !deadMount(dir) {
		t.Fatalf("after kill: %s does not answer ENOTCONN", dir)
	}
	if ok, err := CleanupStale(dir); err != nil || !ok {
		t.Fatalf("CleanupStale: %v, %v", ok, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatalf("after cleanup: %v", err)
	}
	if _, err := os.Stat("/sys/block/" + filepath.Base(dev) + "/loop/backing_file"); err == nil {
		t.Fatalf("%s still attached after cleanup", dev)
	}
	if ok, err := CleanupStale(dir); err != nil || ok {
		t.Fatalf("CleanupStale on a plain dir: %v, %v", ok, err)
	}
	m, err := Mount(dir, "disk", newMemTarget(1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := CleanupStale(dir); err != nil || ok {
		t.Fatalf("CleanupStale on a live mount: %v, %v", ok, err)
	}
	within(t, ctx, "Close", func() {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestMain doubles as the child process of TestCleanupStale and
// TestCloseOnSignal: with FUSEBLK_HELPER_DIR set it mounts there, prints "ready",
// and then either waits to be killed or (FUSEBLK_HELPER_MODE=term) closes the
// mount when SIGTERM arrives, as a daemon's signal handler would.
func TestMain(m *testing.M) {
	if dir := os.Getenv("FUSEBLK_HELPER_DIR"); dir != "" {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		mnt, err := Mount(dir, "disk", newMemTarget(1<<20), nil)
		if err != nil {
			fmt.Print("error ", err)
			os.Exit(1)
		}
		fmt.Print("ready")
		if os.Getenv("FUSEBLK_HELPER_MODE") != "term" {
			time.Sleep(time.Minute)
			os.Exit(0)
		}
		<-term
		if err := mnt.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startHelper runs the TestMain helper serving dir and waits until it has mounted.
func startHelper(t *testing.T, ctx context.Context, dir, mode string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), "FUSEBLK_HELPER_DIR="+dir, "FUSEBLK_HELPER_MODE="+mode)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make([]byte, 5)
	if _, err := io.ReadFull(stdout, ready); err != nil || string(ready) != "ready" {
		_ = cmd.Process.Kill()
		t.Fatalf("helper: %q %v", ready, err)
	}
	return cmd
}

// TestCloseOnSignal: a process that closes its mount from a SIGTERM handler leaves
// nothing mounted.
func TestCloseOnSignal(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t, time.Minute)
	dir := t.TempDir()
	cmd := startHelper(t, ctx, dir, "term")
	if _, ok, _ := mountAt(dir); !ok {
		t.Fatal("helper did not mount")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper exit: %v", err)
	}
	if mnt, ok, _ := mountAt(dir); ok {
		t.Fatalf("still mounted after the signalled process closed: %+v", mnt)
	}
}

// TestCloseAfterExternalUnmount: Close returns promptly when an administrator
// unmounted the FUSE file system already.
func TestCloseAfterExternalUnmount(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t, 30*time.Second)
	dir := t.TempDir()
	m, err := Mount(dir, "disk", newMemTarget(1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	within(t, ctx, "Close", func() {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestCloseWithOpenFile: Close fails (bounded) while a process holds the file open
// and succeeds after it is closed.
func TestCloseWithOpenFile(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t, 30*time.Second)
	defer func(d time.Duration) { unmountTimeout = d }(unmountTimeout)
	unmountTimeout = 500 * time.Millisecond
	m := mountT(t, newMemTarget(1<<20), nil)
	f, err := os.Open(m.Path())
	if err != nil {
		t.Fatal(err)
	}
	within(t, ctx, "Close with open file", func() {
		if err := m.Close(); err == nil || !strings.Contains(err.Error(), "still open") {
			t.Fatalf("Close with an open file: %v", err)
		}
	})
	f.Close()
	within(t, ctx, "Close", func() {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestMountErrors(t *testing.T) {
	requireRoot(t)
	for _, name := range []string{"", "a/b", ".", ".."} {
		if _, err := Mount(t.TempDir(), name, newMemTarget(4096), nil); err == nil {
			t.Errorf("Mount with name %q: no error", name)
		}
	}
	for _, size := range []int64{0, 1000} {
		if _, err := Mount(t.TempDir(), "disk", newMemTarget(size), nil); err == nil ||
			!strings.Contains(err.Error(), "want a positive multiple of 512") {
			t.Errorf("Mount of a %d-byte target: %v", size, err)
		}
	}
	if _, err := Mount(filepath.Join(t.TempDir(), "missing"), "disk", newMemTarget(4096), nil); err == nil {
		t.Error("Mount on a missing dir: no error")
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `/bad\09`: `/bad\09`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTakeOverStaleRebind: loop devices over the file of a killed process's mount
// fail their reads; once the mount is taken over and served again at the same
// path, the read-only one reads the new mount's data (LOOP_CHANGE_FD), the
// writable one is reported as not movable.
func TestTakeOverStaleRebind(t *testing.T) {
	requireRoot(t, "losetup")
	ctx := testCtx(t, time.Minute)
	dir := t.TempDir()
	cmd := startHelper(t, ctx, dir, "kill")
	path := filepath.Join(dir, "disk")
	ro := losetup(t, ctx, path, "--read-only", "--direct-io=on")
	rw := losetup(t, ctx, path, "--direct-io=on")
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	readLoop := func(dev string) ([]byte, error) {
		f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		// O_DIRECT wants an aligned buffer: a page of its own.
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			return nil, err
		}
		defer unix.Munmap(b)
		_, err = f.ReadAt(b, 0)
		return append([]byte(nil), b...), err
	}
	if _, err := readLoop(ro); err == nil {
		t.Fatalf("%s read after its server was killed: want an I/O error", ro)
	}
	devs, err := TakeOverStale(dir)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(devs)
	want := []string{ro, rw}
	sort.Strings(want)
	if strings.Join(devs, " ") != strings.Join(want, " ") {
		t.Fatalf("TakeOverStale: %v, want %v", devs, want)
	}
	tgt := newMemTarget(1 << 20)
	for i := 0; i < 4096; i++ {
		tgt.data[i] = 0xAB
	}
	m, err := Mount(dir, "disk", tgt, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = RebindLoops(devs, m.Path())
	if err == nil || !strings.Contains(err.Error(), rw) || strings.Contains(err.Error(), ro) {
		t.Errorf("RebindLoops: %v, want an error for the writable %s only", err, rw)
	}
	got, err := readLoop(ro)
	if err != nil || !bytes.Equal(got, tgt.data[:4096]) {
		t.Errorf("%s after the rebind: %v, %d bytes, want the new mount's data", ro, err, len(got))
	}
	if devs, err := TakeOverStale(dir); err != nil || devs != nil {
		t.Errorf("TakeOverStale of a live mount: %v, %v; want nothing", devs, err)
	}
	if devs, err := TakeOverStale(filepath.Join(dir+"-missing", "0")); err != nil || devs != nil {
		t.Errorf("TakeOverStale of a missing directory: %v, %v; want nothing", devs, err)
	}
	run(t, ctx, "losetup", "-d", ro)
	run(t, ctx, "losetup", "-d", rw)
	within(t, ctx, "Close", func() {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
