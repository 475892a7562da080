package ublk

// Tests against the real ublk driver. They skip on a host without
// /dev/ublk-control; tests/vm/ublk-suite.sh runs them in a QEMU guest that has it.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestMain doubles as a ublk server for the recovery/crash tests and the VM
// benchmark: with UBLK_TEST_SERVE=<file> the binary serves that file, prints
// "DEV <id>" and runs until SIGTERM (or SIGKILL).
func TestMain(m *testing.M) {
	if path := os.Getenv("UBLK_TEST_SERVE"); path != "" {
		os.Exit(serveFile(path))
	}
	os.Exit(m.Run())
}

func serveFile(path string) int {
	st, err := os.Stat(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ft, err := openFileTarget(path, st.Size())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	opts := Options{
		Recovery:        os.Getenv("UBLK_TEST_RECOVERY") == "1",
		RecoveryReissue: os.Getenv("UBLK_TEST_REISSUE") == "1",
		InThread:        os.Getenv("UBLK_TEST_INTHREAD") == "1",
	}
	if q, err := strconv.Atoi(os.Getenv("UBLK_TEST_QUEUES")); err == nil {
		opts.Queues = q
	}
	dev, err := New(ft, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Printf("DEV %d\n", dev.ID())
	<-sig
	if err := dev.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func requireUblk(t testing.TB) {
	t.Helper()
	if !Available() {
		t.Skip("no /dev/ublk-control on this host; tests/vm/ublk-suite.sh runs this in a VM")
	}
	if os.Geteuid() != 0 {
		t.Fatal("ublk is available but the test is not root")
	}
}

func newDevice(t testing.TB, target interface {
	ReadAt([]byte, int64) (int, error)
	WriteAt([]byte, int64) (int, error)
	Flush() error
	Size() int64
}, opts Options) *Device {
	t.Helper()
	dev, err := New(target, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return dev
}

// alignedBuf is page-aligned memory for O_DIRECT.
func alignedBuf(t testing.TB, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func openDirect(t testing.TB, path string, flags int) int {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func pwriteAll(t testing.TB, fd int, p []byte, off int64, chunk int) {
	t.Helper()
	for done := 0; done < len(p); done += chunk {
		n := min(chunk, len(p)-done)
		if _, err := unix.Pwrite(fd, p[done:done+n], off+int64(done)); err != nil {
			t.Fatalf("pwrite %d bytes at %d: %v", n, off+int64(done), err)
		}
	}
}

func preadAll(t testing.TB, fd int, p []byte, off int64, chunk int) {
	t.Helper()
	for done := 0; done < len(p); done += chunk {
		n := min(chunk, len(p)-done)
		if got, err := unix.Pread(fd, p[done:done+n], off+int64(done)); err != nil || got != n {
			t.Fatalf("pread %d bytes at %d: %d, %v", n, off+int64(done), got, err)
		}
	}
}

func randomBytes(p []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(p); i += 8 {
		*(*uint64)(unsafe.Pointer(&p[i])) = r.Uint64()
	}
}

func roundTrip(t *testing.T, opts Options) (*memTarget, *Device) {
	const size = 64 << 20
	m := newMemTarget(size)
	dev := newDevice(t, m, opts)
	if _, err := os.Stat(dev.Path()); err != nil {
		t.Fatalf("%s: %v", dev.Path(), err)
	}
	fd := openDirect(t, dev.Path(), unix.O_RDWR)
	src := alignedBuf(t, 16<<20)
	randomBytes(src, 1)
	const off = 3 << 20
	pwriteAll(t, fd, src, off, 1<<20)
	if !bytes.Equal(m.snapshot(off, int64(len(src))), src) {
		t.Fatal("target does not hold the written data")
	}
	for _, chunk := range []int{1 << 20, 512 << 10, 4096} {
		n := len(src)
		if chunk == 4096 {
			n = 1 << 20 // small requests are slow under TCG; 256 of them suffice
		}
		back := alignedBuf(t, n)
		preadAll(t, fd, back, off, chunk)
		if !bytes.Equal(back, src[:n]) {
			t.Fatalf("read back with %d-byte reads differs", chunk)
		}
	}
	// Untouched areas read as the target's zeros.
	z := alignedBuf(t, 1<<20)
	preadAll(t, fd, z, size-1<<20, 1<<20)
	if len(bytes.Trim(z, "\x00")) != 0 {
		t.Fatal("unwritten area is not zero")
	}
	return m, dev
}

func TestRoundTripWorkers(t *testing.T) {
	requireUblk(t)
	_, dev := roundTrip(t, Options{})
	if dev.Depth() != DefaultDepth {
		t.Errorf("depth %d, want %d", dev.Depth(), DefaultDepth)
	}
	if dev.Features()&FeatureCmdIoctlEncode == 0 {
		t.Logf("legacy opcodes in use: flags %s", FeatureString(dev.Features()))
	}
}

func TestRoundTripAlwaysWorkers(t *testing.T) {
	requireUblk(t)
	roundTrip(t, Options{AlwaysWorkers: true, Queues: 1, Depth: 16})
}

// A queue idle for releaseIdle after large requests returns its tag buffers'
// pages, and serves correctly afterwards (the buffers then read as zeros).
func TestReleaseIdleBuffers(t *testing.T) {
	requireUblk(t)
	m, dev := roundTrip(t, Options{Queues: 1})
	q := dev.queues[0]
	if !q.ring.deferTaskrun || !q.ring.extArg || q.legacy {
		t.Skip("this kernel copies into tag buffers outside io_uring_enter: buffers are never released")
	}
	deadline := time.Now().Add(30 * time.Second)
	for residentPages(t, q.bufs[:q.depth*q.bufSize]) > 16 {
		if time.Now().After(deadline) {
			t.Fatalf("%d tag buffer pages still resident 30 s after the last request", residentPages(t, q.bufs[:q.depth*q.bufSize]))
		}
		time.Sleep(50 * time.Millisecond)
	}
	fd := openDirect(t, dev.Path(), unix.O_RDWR)
	defer unix.Close(fd)
	src := alignedBuf(t, 8<<20)
	randomBytes(src, 9)
	pwriteAll(t, fd, src, 5<<20, 1<<20)
	back := alignedBuf(t, len(src))
	preadAll(t, fd, back, 5<<20, 1<<20)
	if !bytes.Equal(back, src) || !bytes.Equal(m.snapshot(5<<20, int64(len(src))), src) {
		t.Fatal("data differs after the buffers were released")
	}
}

// The adaptive default serves a RAM target on the queue thread and moves to the
// worker pool once a Target call blocks (here: sleeps 5 ms).
func TestAdaptiveServe(t *testing.T) {
	requireUblk(t)
	m := newMemTarget(1 << 20)
	randomBytes(m.data, 7)
	slow := &sleepyTarget{memTarget: m}
	dev := newDevice(t, slow, Options{Queues: 1})
	q := dev.queues[0]
	fd := openDirect(t, dev.Path(), unix.O_RDONLY)
	defer unix.Close(fd)
	buf := alignedBuf(t, 4096)
	preadAll(t, fd, buf, 0, 4096)
	if !q.policy.inline() {
		t.Fatal("a RAM target's read counted as blocking")
	}
	slow.delay.Store(int64(5 * time.Millisecond))
	// The first slow call may go unsampled (policy.go); the next one is sampled.
	for i := 0; i < 2 && q.policy.inline(); i++ {
		preadAll(t, fd, buf, 4096, 4096)
	}
	if q.policy.inline() {
		t.Fatal("a read that slept 5 ms did not move the queue to the worker pool")
	}
	slow.delay.Store(0)
	for i := 0; i < 8; i++ { // served by workers now, still correctly
		preadAll(t, fd, buf, int64(i)*4096, 4096)
		if !bytes.Equal(buf, m.data[i*4096:(i+1)*4096]) {
			t.Fatalf("read %d: wrong data", i)
		}
	}
}

type sleepyTarget struct {
	*memTarget
	delay atomic.Int64 // ns
}

func (s *sleepyTarget) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(time.Duration(s.delay.Load()))
	return s.memTarget.ReadAt(p, off)
}

func TestRoundTripInThread(t *testing.T) {
	requireUblk(t)
	roundTrip(t, Options{InThread: true, Queues: 1, Depth: 32, MaxIOBytes: 128 << 10})
}

// Two queues, with I/O submitted from threads pinned to each CPU so both serve.
func TestMultiQueue(t *testing.T) {
	requireUblk(t)
	if runtime.NumCPU() < 2 {
		t.Fatalf("needs 2 CPUs for 2 queues, have %d", runtime.NumCPU())
	}
	m := newMemTarget(32 << 20)
	dev := newDevice(t, m, Options{Queues: 2, Depth: 32})
	if dev.Queues() != 2 {
		t.Fatalf("kernel gave %d queues, want 2", dev.Queues())
	}
	mq, err := os.ReadDir(filepath.Join("/sys/block", filepath.Base(dev.Path()), "mq"))
	if err != nil || len(mq) != 2 {
		t.Fatalf("/sys/block/.../mq: %d entries, %v; want 2", len(mq), err)
	}
	fd := openDirect(t, dev.Path(), unix.O_RDWR)
	const workers, per = 8, 256 << 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		buf := alignedBuf(t, per)
		back := alignedBuf(t, per)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var set unix.CPUSet
			set.Set(w % 2)
			unix.SchedSetaffinity(0, &set)
			randomBytes(buf, uint64(w)+100)
			off := int64(w) * per
			for i := 0; i < per; i += 4096 {
				if _, err := unix.Pwrite(fd, buf[i:i+4096], off+int64(i)); err != nil {
					errs <- err
					return
				}
			}
			for i := 0; i < per; i += 4096 {
				if _, err := unix.Pread(fd, back[i:i+4096], off+int64(i)); err != nil {
					errs <- err
					return
				}
			}
			if !bytes.Equal(buf, back) {
				errs <- fmt.Errorf("worker %d: data mismatch", w)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	reqs := dev.QueueRequests()
	if len(reqs) != 2 || reqs[0] == 0 || reqs[1] == 0 {
		t.Errorf("requests per queue %v, want both queues used", reqs)
	}
}

func TestExt4(t *testing.T) {
	requireUblk(t)
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Fatalf("mkfs.ext4 not found (the VM suite passes -b /sbin/mkfs.ext4): %v", err)
	}
	m := newMemTarget(64 << 20)
	dev := newDevice(t, discardTarget{m}, Options{})
	if out, err := exec.Command(mkfs, "-q", "-F", dev.Path()).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dir := t.TempDir()
	mount := func() {
		if err := unix.Mount(dev.Path(), dir, "ext4", 0, ""); err != nil {
			t.Fatalf("mount: %v", err)
		}
	}
	mount()
	want := make([]byte, 5<<20+123)
	randomBytes(want, 7)
	if err := os.WriteFile(filepath.Join(dir, "data"), want, 0o644); err != nil {
		unix.Unmount(dir, 0)
		t.Fatal(err)
	}
	unix.Sync()
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatalf("umount: %v", err)
	}
	mount() // a fresh mount reads from the device, not the page cache
	got, err := os.ReadFile(filepath.Join(dir, "data"))
	unix.Unmount(dir, 0)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file read back after remount: %d bytes, err %v; equal=%v", len(got), err, bytes.Equal(got, want))
	}
	if m.flushes.Load() == 0 {
		t.Error("ext4 journal commits sent no FLUSH/FUA to the target")
	}
}

func TestFlushReachesTarget(t *testing.T) {
	requireUblk(t)
	m := newMemTarget(8 << 20)
	dev := newDevice(t, m, Options{Queues: 1})
	wc, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev.Path()), "queue/write_cache"))
	if !strings.Contains(string(wc), "write back") {
		t.Errorf("write_cache = %q, want write back", wc)
	}
	f, err := os.OpenFile(dev.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := m.flushes.Load()
	if _, err := f.WriteAt([]byte("flush me"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if m.flushes.Load() == before {
		t.Fatal("fsync on the device did not flush the target")
	}
	if !bytes.Equal(m.snapshot(4096, 8), []byte("flush me")) {
		t.Fatal("data not in the target after fsync")
	}
}

func blkRangeIoctl(fd int, req uint, off, n uint64) error {
	r := [2]uint64{off, n}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

func TestDiscardReachesTarget(t *testing.T) {
	requireUblk(t)
	m := newMemTarget(16 << 20)
	copy(m.data, bytes.Repeat([]byte{0xCD}, len(m.data)))
	dev := newDevice(t, discardTarget{m}, Options{Queues: 1})
	fd := openDirect(t, dev.Path(), unix.O_RDWR)
	if err := blkRangeIoctl(fd, unix.BLKDISCARD, 1<<20, 2<<20); err != nil {
		t.Fatalf("BLKDISCARD: %v", err)
	}
	m.mu.Lock()
	var covered int64
	for _, s := range m.discards {
		if s.off < 1<<20 || s.off+s.n > 3<<20 {
			t.Errorf("discard %+v outside [1M, 3M)", s)
		}
		covered += s.n
	}
	m.mu.Unlock()
	if covered != 2<<20 {
		t.Fatalf("target saw %d discarded bytes (%+v), want %d", covered, m.discards, 2<<20)
	}
	back := alignedBuf(t, 3<<20)
	preadAll(t, fd, back, 0, 1<<20)
	if back[1<<20-1] != 0xCD || len(bytes.Trim(back[1<<20:], "\x00")) != 0 {
		t.Fatal("device contents around the discarded range are wrong")
	}
}

func TestWriteZeroesReachesTarget(t *testing.T) {
	requireUblk(t)
	m := newMemTarget(16 << 20)
	copy(m.data, bytes.Repeat([]byte{0xEF}, len(m.data)))
	dev := newDevice(t, zeroTarget{discardTarget{m}}, Options{Queues: 1})
	fd := openDirect(t, dev.Path(), unix.O_RDWR)
	if err := blkRangeIoctl(fd, unix.BLKZEROOUT, 4<<20, 1<<20); err != nil {
		t.Fatalf("BLKZEROOUT: %v", err)
	}
	m.mu.Lock()
	n := len(m.zeroes)
	m.mu.Unlock()
	if n == 0 {
		t.Fatal("BLKZEROOUT did not reach WriteZeroes")
	}
	if z := m.snapshot(4<<20, 1<<20); len(bytes.Trim(z, "\x00")) != 0 || m.snapshot(5<<20, 1)[0] != 0xEF {
		t.Fatal("zeroed range wrong in the target")
	}
}

func TestReadOnlyDevice(t *testing.T) {
	requireUblk(t)
	m := newMemTarget(8 << 20)
	copy(m.data, bytes.Repeat([]byte("ro"), 4<<20))
	dev := newDevice(t, roTarget{m}, Options{Queues: 1})
	ro, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev.Path()), "ro"))
	if strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("/sys/block/.../ro = %q, want 1", ro)
	}
	fd, err := unix.Open(dev.Path(), unix.O_RDWR|unix.O_DIRECT, 0)
	if err == nil {
		buf := alignedBuf(t, 4096)
		_, werr := unix.Pwrite(fd, buf, 0)
		unix.Close(fd)
		if werr == nil {
			t.Fatal("write to a read-only device succeeded")
		}
	}
	if !bytes.Equal(m.snapshot(0, 4), []byte("roro")) {
		t.Fatal("read-only target modified")
	}
	rfd := openDirect(t, dev.Path(), unix.O_RDONLY)
	buf := alignedBuf(t, 4096)
	preadAll(t, rfd, buf, 8192, 4096)
	if !bytes.Equal(buf[:4], []byte("roro")) {
		t.Fatal("read from read-only device wrong")
	}
}

func TestTargetErrorsBecomeEIO(t *testing.T) {
	requireUblk(t)
	for _, inThread := range []bool{false, true} {
		m := newMemTarget(8 << 20)
		dev := newDevice(t, badTarget{m, 1 << 20, 4096}, Options{Queues: 1, InThread: inThread})
		fd := openDirect(t, dev.Path(), unix.O_RDWR)
		buf := alignedBuf(t, 8192)
		if _, err := unix.Pread(fd, buf[:4096], 1<<20); !errors.Is(err, unix.EIO) {
			t.Errorf("inThread=%v: read of failing range: %v, want EIO", inThread, err)
		}
		if _, err := unix.Pwrite(fd, buf[:4096], 1<<20); !errors.Is(err, unix.EIO) {
			t.Errorf("inThread=%v: write of failing range: %v, want EIO", inThread, err)
		}
		if n, err := unix.Pread(fd, buf, 0); err != nil || n != 8192 {
			t.Errorf("inThread=%v: read elsewhere: %d, %v", inThread, n, err)
		}
	}
}

// startServer runs this test binary as a ublk server of path (see TestMain).
func startServer(t *testing.T, path string, recovery bool, env ...string) (*exec.Cmd, uint32) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "UBLK_TEST_SERVE="+path, "UBLK_TEST_RECOVERY="+map[bool]string{true: "1"}[recovery])
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	var id uint32
	if _, serr := fmt.Sscanf(line, "DEV %d", &id); err != nil || serr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("server did not report a device: %q, %v", line, err)
	}
	return cmd, id
}

func waitState(t *testing.T, id uint32, want State) Info {
	t.Helper()
	var in Info
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if in, err = GetInfo(id); err == nil && in.State == want {
			return in
		}
	}
	t.Fatalf("device %d: state %v (err %v), want %v", id, in.State, err, want)
	return in
}

func TestUserRecovery(t *testing.T) {
	requireUblk(t)
	t.Run("requeue", func(t *testing.T) { testUserRecovery(t, false) })
	t.Run("reissue", func(t *testing.T) { testUserRecovery(t, true) })
}

func testUserRecovery(t *testing.T, reissue bool) {
	path := filepath.Join(t.TempDir(), "disk.img")
	const size = 32 << 20
	ft, err := openFileTarget(path, size)
	if err != nil {
		t.Fatal(err)
	}
	defer ft.f.Close()
	srv, id := startServer(t, path, true, "UBLK_TEST_REISSUE="+map[bool]string{true: "1"}[reissue])
	devPath := "/dev/ublkb" + strconv.Itoa(int(id))
	in := waitState(t, id, StateLive)
	if in.ServerPID != srv.Process.Pid || in.Features&FeatureUserRecovery == 0 || (in.Features&FeatureUserRecoveryReissue != 0) != reissue {
		t.Fatalf("info %+v: want server pid %d, USER_RECOVERY, REISSUE=%v", in, srv.Process.Pid, reissue)
	}
	src := alignedBuf(t, 8<<20)
	randomBytes(src, 42)
	fd, err := unix.Open(devPath, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	pwriteAll(t, fd, src, 1<<20, 1<<20)
	unix.Fsync(fd)
	unix.Close(fd)

	srv.Process.Kill()
	srv.Wait()
	waitState(t, id, StateQuiesced)
	if _, err := os.Stat(devPath); err != nil {
		t.Fatalf("%s gone while quiesced: %v", devPath, err)
	}

	// The quiesced device is an orphan by pid, but keep protects it.
	if deleted, err := CleanupOrphans(func(x uint32) bool { return x == id }); err != nil || containsID(deleted, id) {
		t.Fatalf("CleanupOrphans with keep: deleted %v, %v", deleted, err)
	}

	// I/O issued while quiesced waits for the new server.
	early := alignedBuf(t, 4096)
	earlyDone := make(chan error, 1)
	go func() {
		efd, err := unix.Open(devPath, unix.O_RDONLY|unix.O_DIRECT, 0)
		if err == nil {
			_, err = unix.Pread(efd, early, 1<<20)
			unix.Close(efd)
		}
		earlyDone <- err
	}()
	select {
	case err := <-earlyDone:
		t.Fatalf("read on a quiesced device returned (%v) before recovery", err)
	case <-time.After(300 * time.Millisecond):
	}

	dev, err := Recover(id, ft, Options{})
	if err != nil {
		Delete(id)
		t.Fatalf("Recover: %v", err)
	}
	select {
	case err := <-earlyDone:
		if err != nil || !bytes.Equal(early, src[:4096]) {
			t.Errorf("read queued during quiesce: %v, data equal %v", err, bytes.Equal(early, src[:4096]))
		}
	case <-time.After(15 * time.Second):
		t.Error("read queued during quiesce did not complete after recovery")
	}
	in, err = dev.Info()
	if err != nil || in.State != StateLive || in.ServerPID != os.Getpid() {
		t.Errorf("after recovery: %+v, %v; want LIVE served by %d", in, err, os.Getpid())
	}
	back := alignedBuf(t, len(src))
	rfd, err := unix.Open(devPath, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	preadAll(t, rfd, back, 1<<20, 1<<20)
	unix.Close(rfd)
	if !bytes.Equal(back, src) {
		t.Error("data written before the crash differs after recovery")
	}
	if err := dev.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := GetInfo(id); !errors.Is(err, unix.ENODEV) {
		t.Errorf("GetInfo after Close: %v, want ENODEV", err)
	}
}

// Without recovery the kernel stops the device of a killed server; the char
// device stays until CleanupOrphans deletes it.
func TestCrashThenCleanupOrphans(t *testing.T) {
	requireUblk(t)
	path := filepath.Join(t.TempDir(), "disk.img")
	ft, err := openFileTarget(path, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	ft.f.Close()
	srv, id := startServer(t, path, false)
	srv.Process.Kill()
	srv.Wait()
	waitState(t, id, StateDead)
	deleted, err := CleanupOrphans(nil)
	if err != nil {
		t.Fatalf("CleanupOrphans: %v", err)
	}
	if !containsID(deleted, id) {
		t.Fatalf("CleanupOrphans deleted %v, want %d among them", deleted, id)
	}
	if _, err := GetInfo(id); !errors.Is(err, unix.ENODEV) {
		t.Errorf("GetInfo after cleanup: %v, want ENODEV", err)
	}
}

func containsID(ids []uint32, id uint32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func TestListAndKeep(t *testing.T) {
	requireUblk(t)
	dev := newDevice(t, newMemTarget(1<<20), Options{Queues: 1, Depth: 4})
	list, err := List()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, in := range list {
		if in.ID == dev.ID() {
			found = true
			if in.State != StateLive || in.ServerPID != os.Getpid() || in.CreatorPID != os.Getpid() || in.Queues != 1 || in.Depth != 4 {
				t.Errorf("List entry %+v", in)
			}
		}
	}
	if !found {
		t.Fatalf("List %+v lacks device %d", list, dev.ID())
	}
	// Our own live device is never an orphan.
	deleted, err := CleanupOrphans(func(uint32) bool { return false })
	if err != nil || containsID(deleted, dev.ID()) {
		t.Fatalf("CleanupOrphans deleted %v (err %v), including our live device", deleted, err)
	}
	if f, err := Features(); err != nil || f&FeatureUserRecovery == 0 {
		t.Errorf("Features() = %s, %v", FeatureString(f), err)
	}
}

func TestSpecificID(t *testing.T) {
	requireUblk(t)
	const id = 77
	dev := newDevice(t, newMemTarget(1<<20), Options{Queues: 1, Depth: 4, SpecificID: true, ID: id})
	if dev.ID() != id || dev.Path() != "/dev/ublkb77" {
		t.Fatalf("got %d %s, want %d", dev.ID(), dev.Path(), id)
	}
	if _, err := New(newMemTarget(1<<20), Options{Queues: 1, Depth: 4, SpecificID: true, ID: id}); err == nil || !strings.Contains(err.Error(), "ADD_DEV") {
		t.Fatalf("second device with id %d: %v, want an ADD_DEV error", id, err)
	}
}

func TestManyDevicesConcurrently(t *testing.T) {
	requireUblk(t)
	const n = 16
	ids := make([]uint32, n)
	var created, closed sync.WaitGroup
	created.Add(n)
	for i := 0; i < n; i++ {
		closed.Add(1)
		go func(i int) {
			defer closed.Done()
			m := newMemTarget(2 << 20)
			dev, err := New(m, Options{Queues: 1 + i%2, Depth: 8, MaxIOBytes: 64 << 10, InThread: i%3 == 0})
			created.Done()
			if err != nil {
				t.Errorf("device %d: New: %v", i, err)
				return
			}
			ids[i] = dev.ID()
			created.Wait() // all devices live at once before any closes
			f, err := os.OpenFile(dev.Path(), os.O_RDWR, 0)
			if err == nil {
				msg := []byte(fmt.Sprintf("device %d", i))
				if _, err = f.WriteAt(msg, 512); err == nil {
					err = f.Sync()
				}
				f.Close()
				if err == nil && !bytes.Equal(m.snapshot(512, int64(len(msg))), msg) {
					err = errors.New("data did not reach the target")
				}
			}
			if err != nil {
				t.Errorf("device %d: %v", i, err)
			}
			if err := dev.Close(); err != nil {
				t.Errorf("device %d: Close: %v", i, err)
			}
		}(i)
	}
	closed.Wait()
	seen := map[uint32]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("id %d handed out twice to live devices (ids %v)", id, ids)
		}
		seen[id] = true
	}
	list, err := List()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if seen[in.ID] {
			t.Errorf("device %d still listed after Close: %+v", in.ID, in)
		}
	}
}

// Hitting the open-file limit gives an error that says so, and leaves no device behind.
func TestFileLimit(t *testing.T) {
	requireUblk(t)
	before, err := List()
	if err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	// Room for the control device, its ring and /dev/ublkcN, not for the queues.
	lim := unix.Rlimit{Cur: uint64(len(fds) + 3), Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	dev, err := New(newMemTarget(1<<20), Options{Queues: 2, Depth: 4})
	unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	if err == nil {
		dev.Close()
		t.Fatal("New succeeded with no file descriptors to spare")
	}
	if !errors.Is(err, unix.EMFILE) || !strings.Contains(err.Error(), "open file limit") {
		t.Fatalf("error %q does not name the open file limit", err)
	}
	after, err := List()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("devices before %+v, after the failed New %+v", before, after)
	}
}

// Deleting a device from outside ends serving: Done closes, Close still cleans up.
func TestDoneWhenDeletedElsewhere(t *testing.T) {
	requireUblk(t)
	dev, err := New(newMemTarget(1<<20), Options{Queues: 2, Depth: 8})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-dev.Done():
		t.Fatal("Done closed while serving")
	default:
	}
	deleted := make(chan error, 1)
	go func() { deleted <- Delete(dev.ID()) }()
	select {
	case <-dev.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("Done not closed after Delete")
	}
	if err := dev.Err(); err != nil {
		t.Errorf("Err after an orderly stop: %v", err)
	}
	if err := dev.Close(); err != nil {
		t.Errorf("Close after Delete: %v", err)
	}
	if err := <-deleted; err != nil {
		t.Errorf("Delete: %v", err)
	}
	if _, err := GetInfo(dev.ID()); !errors.Is(err, unix.ENODEV) {
		t.Errorf("GetInfo after Delete: %v, want ENODEV", err)
	}
}

// A device still being set up has no server pid yet; CleanupOrphans must judge
// it by its creator.
func TestCleanupOrphansSparesDeviceInSetup(t *testing.T) {
	requireUblk(t)
	c, err := openController()
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	add := func(creator int) uint32 {
		info, err := c.addDev(devInfo{NrHwQueues: 1, QueueDepth: 4, MaxIOBufBytes: 64 << 10, DevID: autoDevID,
			Flags: FeatureCmdIoctlEncode, ServerFlags: creatorTag(creator)})
		if err != nil {
			t.Fatal(err)
		}
		return info.DevID
	}
	mine, orphan := add(os.Getpid()), add(dead.Process.Pid)
	defer deleteWith(c, mine)
	deleted, err := CleanupOrphans(nil)
	if err != nil {
		t.Fatalf("CleanupOrphans: %v", err)
	}
	if containsID(deleted, mine) || !containsID(deleted, orphan) {
		t.Fatalf("deleted %v; want %d (dead creator) but not %d (live creator)", deleted, orphan, mine)
	}
}

func TestRecoverRefusals(t *testing.T) {
	requireUblk(t)
	m := newMemTarget(1 << 20)
	dev := newDevice(t, m, Options{Queues: 1, Depth: 4, Recovery: true})
	if _, err := Recover(dev.ID(), m, Options{}); err == nil || !strings.Contains(err.Error(), "LIVE") {
		t.Errorf("Recover of a live device: %v, want a LIVE error", err)
	}
	plain := newDevice(t, newMemTarget(1<<20), Options{Queues: 1, Depth: 4})
	if _, err := Recover(plain.ID(), m, Options{}); err == nil || !strings.Contains(err.Error(), "USER_RECOVERY") {
		t.Errorf("Recover of a device without recovery: %v", err)
	}
}
