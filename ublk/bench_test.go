package ublk

// Benchmarks for the VM (tests/vm/bench-ublk.sh). Load comes from one io_uring
// per run (O_DIRECT reads at a fixed queue depth), not from goroutines doing
// blocking preads, whose Go scheduling noise would swamp the device's numbers.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioLoad issues ops reads of bs bytes at queue depth qd on fd (random offsets
// within size, or sequential) and returns the elapsed time.
func ioLoad(tb testing.TB, fd int, size int64, bs, qd, ops int, random bool) time.Duration {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := newRing(ringSize(uint32(qd)), 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer r.close()
	bufs := alignedBuf(tb, qd*bs)
	rng := rand.New(rand.NewPCG(1, 2))
	blocks := size / int64(bs)
	next := int64(0)
	issue := func(slot int) {
		s, err := r.getSQE()
		if err != nil {
			tb.Fatal(err)
		}
		off := next
		if random {
			off = rng.Int64N(blocks)
		}
		next = (next + 1) % blocks
		s.Opcode = ioringOpRead
		s.Fd = int32(fd)
		s.Addr = uint64(uintptr(unsafe.Pointer(&bufs[slot*bs])))
		s.Len = uint32(bs)
		s.Off = uint64(off * int64(bs))
		s.UserData = uint64(slot)
	}
	start := time.Now()
	issued, done := 0, 0
	for ; issued < min(qd, ops); issued++ {
		issue(issued)
	}
	for done < ops {
		if err := r.submit(1); err != nil {
			tb.Fatal(err)
		}
		r.reap(func(c cqe) {
			if c.Res != int32(bs) {
				tb.Fatalf("read returned %d, want %d", c.Res, bs)
			}
			done++
			if issued < ops {
				issue(int(c.UserData))
				issued++
			}
		})
	}
	return time.Since(start)
}

func iops(ops int, d time.Duration) float64 { return float64(ops) / d.Seconds() }

// ioLoadCPU is ioLoad that also returns the CPU time (user + system) the rest of
// this process spent meanwhile: the process's minus the load thread's own, i.e.
// what the device's server (queue threads, workers, Go runtime) cost. The load
// thread's time includes the block layer's submission work, which loop pays too.
func ioLoadCPU(tb testing.TB, fd int, size int64, bs, qd, ops int, random bool) (wall, serve time.Duration) {
	runtime.LockOSThread() // ioLoad's thread, so its usage is ours
	defer runtime.UnlockOSThread()
	p0, t0 := processCPU(), getThreadUsage().cpu
	wall = ioLoad(tb, fd, size, bs, qd, ops, random)
	p1, t1 := processCPU(), getThreadUsage().cpu
	return wall, (p1 - p0) - (t1 - t0)
}

func processCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// slowTarget sleeps in every read, like a target that fetches from a disk or
// a registry: the case the worker pool exists for.
type slowTarget struct {
	*memTarget
	delay time.Duration
}

func (s slowTarget) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.delay)
	return s.memTarget.ReadAt(p, off)
}

// BenchmarkServeMode measures 4 KiB random reads with Target calls in the queue
// thread and on the worker pool, on a RAM target and on one whose reads take
// 200 µs, and reports workers' IOPS as a ratio of in-thread IOPS.
func BenchmarkServeMode(b *testing.B) {
	requireUblk(b)
	const size = 64 << 20
	for _, slow := range []bool{false, true} {
		for _, qd := range []int{1, 32} {
			name := fmt.Sprintf("ram/qd%d", qd)
			if slow {
				name = fmt.Sprintf("slow200us/qd%d", qd)
			}
			b.Run(name, func(b *testing.B) {
				var res [2]float64
				for i, inThread := range []bool{true, false} {
					m := newMemTarget(size)
					var dev *Device
					var err error
					if slow {
						dev, err = New(slowTarget{m, 200 * time.Microsecond}, Options{InThread: inThread})
					} else {
						dev, err = New(m, Options{InThread: inThread})
					}
					if err != nil {
						b.Fatal(err)
					}
					fd, err := unix.Open(dev.Path(), unix.O_RDONLY|unix.O_DIRECT, 0)
					if err != nil {
						b.Fatal(err)
					}
					res[i] = iops(b.N, ioLoad(b, fd, size, 4096, qd, b.N, true))
					unix.Close(fd)
					if err := dev.Close(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(res[0], "inthread-IOPS")
				b.ReportMetric(res[1], "workers-IOPS")
				b.ReportMetric(res[1]/res[0], "workers-x-vs-inthread")
			})
		}
	}
}

// loopDevice attaches path to a free kernel loop device.
func loopDevice(tb testing.TB, path string) string {
	tb.Helper()
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer unix.Close(ctl)
	n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
	if err != nil {
		tb.Fatal(err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	lfd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	ffd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer unix.Close(ffd)
	if err := unix.IoctlSetInt(lfd, unix.LOOP_SET_FD, ffd); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0)
		unix.Close(lfd)
	})
	return dev
}

// BenchmarkVsLoop reads the same file through /dev/ublkbN (a file Target) and
// through the kernel loop driver, and reports ublk's throughput as a ratio of loop's.
func BenchmarkVsLoop(b *testing.B) {
	requireUblk(b)
	const size = 128 << 20
	path := filepath.Join(b.TempDir(), "disk.img")
	ft, err := openFileTarget(path, size)
	if err != nil {
		b.Fatal(err)
	}
	defer ft.f.Close()
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		randomBytes(chunk, uint64(off))
		if _, err := ft.f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	loop := loopDevice(b, path)
	// Knobs for exploring where time goes (see tests/vm/bench-ublk.sh).
	opts := Options{InThread: os.Getenv("UBLK_BENCH_INTHREAD") == "1"}
	if v, err := strconv.Atoi(os.Getenv("UBLK_BENCH_MAXIO")); err == nil {
		opts.MaxIOBytes = v
	}
	dev, err := New(ft, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	for _, c := range []struct {
		name       string
		bs, qd     int
		random     bool
		opsPerIter int
	}{
		{"rand4k-qd1", 4096, 1, true, 1},
		{"rand4k-qd32", 4096, 32, true, 1},
		{"seq1m-qd1", 1 << 20, 1, false, 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			var res [2]float64
			for i, p := range []string{loop, dev.Path()} {
				fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECT, 0)
				if err != nil {
					b.Fatal(err)
				}
				res[i] = iops(b.N, ioLoad(b, fd, size, c.bs, c.qd, b.N, c.random))
				unix.Close(fd)
			}
			b.ReportMetric(res[0], "loop-IOPS")
			b.ReportMetric(res[1], "ublk-IOPS")
			b.ReportMetric(res[1]/res[0], "x-vs-loop")
		})
	}
}
