package ublk

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestRingArithmetic(t *testing.T) {
	cases := []struct{ head, tail, entries, free uint32 }{
		{0, 0, 8, 8},
		{0, 8, 8, 0},
		{5, 9, 8, 4},
		{math.MaxUint32 - 2, 2, 8, 3}, // tail wrapped past 2^32: 5 queued
		{math.MaxUint32, math.MaxUint32, 128, 128},
	}
	for _, c := range cases {
		if got := sqFree(c.head, c.tail, c.entries); got != c.free {
			t.Errorf("sqFree(%d, %d, %d) = %d, want %d", c.head, c.tail, c.entries, got, c.free)
		}
	}
	if got := cqReady(math.MaxUint32-1, 3); got != 5 {
		t.Errorf("cqReady across wrap = %d, want 5", got)
	}
	for _, c := range []struct{ n, want uint32 }{{0, 1}, {1, 1}, {2, 2}, {3, 4}, {129, 256}, {4097, 8192}} {
		if got := ringSize(c.n); got != c.want {
			t.Errorf("ringSize(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

// newTestRing sets up a real io_uring. The host kernel running the unit tests
// has io_uring even when it lacks ublk; a sandbox that forbids it cannot run
// this package at all.
func newTestRing(t *testing.T, entries, flags uint32) *ring {
	t.Helper()
	r, err := newRing(entries, flags)
	if err != nil {
		t.Fatalf("newRing: %v", err)
	}
	t.Cleanup(r.close)
	return r
}

// NOPs through a real ring: every submitted SQE comes back once, with its
// user_data, across many laps of the ring.
func TestRingNops(t *testing.T) {
	for _, flags := range []uint32{0, ioringSetupSQE128} {
		r := newTestRing(t, 8, flags)
		next := uint64(0)
		seen := map[uint64]bool{}
		for lap := 0; lap < 50; lap++ {
			batch := 1 + lap%int(r.sqEntries)
			for i := 0; i < batch; i++ {
				s, err := r.getSQE()
				if err != nil {
					t.Fatalf("lap %d: getSQE: %v", lap, err)
				}
				s.Opcode = ioringOpNop
				s.UserData = next
				next++
			}
			for got := 0; got < batch; {
				if err := r.submit(1); err != nil {
					t.Fatal(err)
				}
				got += r.reap(func(c cqe) {
					if c.Res != 0 || seen[c.UserData] || c.UserData >= next {
						t.Errorf("unexpected CQE %+v", c)
					}
					seen[c.UserData] = true
				})
			}
		}
		if uint64(len(seen)) != next {
			t.Errorf("flags %#x: %d completions for %d NOPs", flags, len(seen), next)
		}
	}
}

func TestRingFull(t *testing.T) {
	r := newTestRing(t, 4, 0)
	for i := uint32(0); i < r.sqEntries; i++ {
		if _, err := r.getSQE(); err != nil {
			t.Fatalf("SQE %d: %v", i, err)
		}
	}
	if _, err := r.getSQE(); !errors.Is(err, errRingFull) {
		t.Fatalf("getSQE on a full ring: %v, want errRingFull", err)
	}
	if err := r.submit(r.sqEntries); err != nil { // NOPs (zeroed SQEs are NOPs)
		t.Fatal(err)
	}
	if n := r.reap(func(cqe) {}); n != int(r.sqEntries) {
		t.Fatalf("reaped %d, want %d", n, r.sqEntries)
	}
	if _, err := r.getSQE(); err != nil {
		t.Fatalf("getSQE after drain: %v", err)
	}
}

// A READ on an eventfd completes once another goroutine writes it: the wake-up
// path of the worker mode.
func TestRingEventfdWake(t *testing.T) {
	r := newTestRing(t, 4, 0)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	q := &queue{ring: r, efd: efd, depth: 0, bufSize: 0, bufs: make([]byte, 8)}
	if err := q.armEvent(); err != nil {
		t.Fatal(err)
	}
	if err := r.submit(0); err != nil {
		t.Fatal(err)
	}
	q.running = 1 // as dispatch would have
	q.calls.Add(1)
	go q.finish(7, 4096)
	var got cqe
	for n := 0; n == 0; {
		if err := r.submit(1); err != nil {
			t.Fatal(err)
		}
		n = r.reap(func(c cqe) { got = c })
	}
	if got.UserData != eventUserData || got.Res != 8 {
		t.Fatalf("eventfd CQE %+v, want user_data %#x res 8", got, uint64(eventUserData))
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.completed) != 1 || q.completed[0] != (completion{7, 4096}) {
		t.Fatalf("completed = %+v", q.completed)
	}
}

// BenchmarkWorkerHandoff measures the worker-mode round trip without ublk: the
// locked queue thread dispatches a tag to an idle worker, the worker finishes
// it, and the queue thread wakes from io_uring_enter on the eventfd READ. The
// baseline is a plain channel ping-pong between two goroutines, which is what
// the hand-off would cost if the queue thread could park in Go instead of the kernel.
func BenchmarkWorkerHandoff(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := newRing(8, ioringSetupSingleIssuer|ioringSetupDeferTaskrun)
	if err != nil {
		b.Fatal(err)
	}
	defer r.close()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(efd)
	bufs, err := unix.Mmap(-1, 0, 2*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(bufs)
	descs := make([]byte, descSize) // one FLUSH descriptor (op 2) for tag 0
	descs[0] = opFlush
	q := &queue{ring: r, efd: efd, bufs: bufs, depth: 1, bufSize: 4096, descs: descs, be: newBackend(newMemTarget(4096)), workers: 1}
	defer q.stopWorkers()

	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := q.armEvent(); err != nil {
			b.Fatal(err)
		}
		q.dispatch(0)
		for got := 0; got == 0; {
			if err := r.submit(1); err != nil {
				b.Fatal(err)
			}
			got = r.reap(func(cqe) {})
		}
		q.mu.Lock()
		q.completed, q.signalled = q.completed[:0], false
		q.mu.Unlock()
	}
	handoff := time.Since(start)

	// The baseline runs on ordinary (unlocked) goroutines.
	done := make(chan time.Duration)
	go func() {
		ping, pong := make(chan int), make(chan int)
		go func() {
			for v := range ping {
				pong <- v
			}
		}()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			ping <- i
			<-pong
		}
		close(ping)
		done <- time.Since(start)
	}()
	baseline := <-done
	b.ReportMetric(float64(handoff.Nanoseconds())/float64(b.N), "handoff-ns")
	b.ReportMetric(float64(baseline.Nanoseconds())/float64(b.N), "chan-pingpong-ns")
	b.ReportMetric(float64(handoff)/float64(baseline), "x-vs-pingpong")
}

// submitTimeout returns with an empty CQ once the timeout passed with nothing
// to complete: the idle wait after which a queue releases its buffers.
func TestRingSubmitTimeout(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := newRing(8, ioringSetupSingleIssuer|ioringSetupDeferTaskrun)
	if err != nil {
		t.Skip("no DEFER_TASKRUN rings here:", err)
	}
	defer r.close()
	if !r.extArg || !r.deferTaskrun {
		t.Skipf("ring features: ext arg %v, defer taskrun %v", r.extArg, r.deferTaskrun)
	}
	start := time.Now()
	if err := r.submitTimeout(20 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 10*time.Millisecond || r.ready() != 0 {
		t.Fatalf("idle wait returned after %v with %d CQEs", took, r.ready())
	}
	if _, err := r.getSQE(); err != nil { // a NOP completes at once
		t.Fatal(err)
	}
	if err := r.submitTimeout(time.Minute); err != nil || r.ready() != 1 {
		t.Fatalf("NOP: %v, %d CQEs", err, r.ready())
	}
}

// releaseBuffers returns the tag buffers' pages: resident memory drops, the
// buffers read as zeros.
func TestQueueReleaseBuffers(t *testing.T) {
	const depth, bufSize = 8, 1 << 20
	bufs, err := unix.Mmap(-1, 0, depth*bufSize+4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(bufs)
	q := &queue{depth: depth, bufSize: bufSize, bufs: bufs}
	resident := func() int { return residentPages(t, bufs) }
	for i := range bufs[:depth*bufSize] {
		bufs[i] = 0xEE
	}
	before := resident()
	q.releaseBuffers()
	after := resident()
	if before < depth*bufSize/4096 || after > 1 {
		t.Fatalf("resident pages: %d before the release, %d after", before, after)
	}
	if q.buf(3)[100] != 0 {
		t.Fatal("released buffer still holds data")
	}
}

// residentPages counts the pages of b in memory (mincore).
func residentPages(t *testing.T, b []byte) int {
	vec := make([]byte, (len(b)+4095)/4096)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestRingLinkedReads checks, on the host's io_uring, what fileread.go's
// queueLinked relies on: a NOP (standing for the COMMIT) linked after reads runs
// only when every read returned all its bytes; a failed or short read posts its
// CQE even with IOSQE_CQE_SKIP_SUCCESS and cancels the rest of the chain; a
// successful read with that flag posts nothing.
func TestRingLinkedReads(t *testing.T) {
	r := newTestRing(t, 16, 0)
	if !r.cqeSkip {
		t.Skip("kernel without IORING_FEAT_CQE_SKIP: reads are not linked there")
	}
	path := t.TempDir() + "/f"
	if err := os.WriteFile(path, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	rd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rd)
	wr, err := unix.Open(path, unix.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wr)
	buf := make([]byte, 4096)
	type read struct {
		fd   int
		off  uint64
		skip bool
	}
	const nop = 99
	for _, c := range []struct {
		name  string
		reads []read
		want  []cqe // in order: user data (piece index, nop) and result
	}{
		{"whole", []read{{rd, 0, true}, {rd, 4096, false}}, []cqe{{UserData: 1, Res: 4096}, {UserData: nop}}},
		{"whole, all skipped", []read{{rd, 0, true}, {rd, 4096, true}}, []cqe{{UserData: nop}}},
		{"short", []read{{rd, 0, true}, {rd, 6144, false}}, []cqe{{UserData: 1, Res: 2048}, {UserData: nop, Res: -int32(unix.ECANCELED)}}},
		{"past EOF, skipped", []read{{rd, 8192, true}, {rd, 0, false}}, []cqe{{UserData: 0, Res: 0}}},
		{"failed", []read{{wr, 0, true}, {rd, 0, false}}, []cqe{{UserData: 0, Res: -int32(unix.EBADF)}}},
	} {
		for i, rc := range c.reads {
			s, err := r.getSQE()
			if err != nil {
				t.Fatal(err)
			}
			s.Opcode, s.Fd, s.Off, s.Len = ioringOpRead, int32(rc.fd), rc.off, uint32(len(buf))
			s.Addr = uint64(uintptr(unsafe.Pointer(&buf[0])))
			s.Flags = iosqeIOLink
			if rc.skip {
				s.Flags |= iosqeCQESkipSuccess
			}
			s.UserData = uint64(i)
		}
		s, err := r.getSQE()
		if err != nil {
			t.Fatal(err)
		}
		s.Opcode, s.UserData = ioringOpNop, nop
		if err := r.submit(uint32(len(c.want))); err != nil {
			t.Fatal(err)
		}
		// Whatever else might come, it comes within this submission: a NOP
		// after it marks the end.
		s, _ = r.getSQE()
		s.Opcode, s.UserData = ioringOpNop, 1000
		var got []cqe
		for done := false; !done; {
			if err := r.submit(1); err != nil {
				t.Fatal(err)
			}
			r.reap(func(e cqe) {
				if e.UserData == 1000 {
					done = true
					return
				}
				e.Flags = 0
				got = append(got, e)
			})
		}
		runtime.KeepAlive(buf)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: CQEs %v, want %v", c.name, got, c.want)
		}
	}
}
