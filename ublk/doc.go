// Package ublk serves a blockdev.Target as a Linux ublk block device
// (/dev/ublkbN), over io_uring with golang.org/x/sys/unix only (no cgo).
//
//	dev, err := ublk.New(target, ublk.Options{})   // /dev/ublkbN exists on return
//	...
//	err = dev.Close()                              // STOP, drain, unmap, DEL
//
// # Design
//
// Control commands go to /dev/ublk-control through a small SQE128 ring; every
// buffer the kernel touches lives in an anonymous mmap, since the driver reads
// and writes it asynchronously from an io-wq worker. Features are negotiated
// with GET_FEATURES; kernels without it (before 6.5) get the legacy opcodes and
// the 6.1 feature set.
//
// Each hardware queue (default min(GOMAXPROCS, 4)) has one goroutine locked to
// its OS thread, which owns one io_uring (SINGLE_ISSUER|DEFER_TASKRUN when the
// kernel has it): the kernel binds a queue to the thread that FETCHed its tags.
// The thread FETCHes every tag into a per-tag buffer (anonymous mmap, so the GC
// never moves it), then loops on COMMIT_AND_FETCH.
//
// Target calls run either on the queue thread or on workers, up to Workers
// calls in flight per queue. By default (adaptive) the queue thread calls the Target
// itself as long as calls do not block, and uses the workers for a second after a
// call (inline or on a worker) spent more than Options.BlockThreshold off the
// CPU (policy.go); Options.InThread and Options.AlwaysWorkers fix one mode. The
// queue thread hands a tag to an idle worker of a process-wide pool shared by
// all devices (each sleeps on its own futex: waking a goroutine through a
// channel from a thread about to block in io_uring_enter costs the Go scheduler
// tens of µs; at most 64 such threads, then ordinary goroutines), so a device
// costs its queue threads and no idle worker thread. A worker's result comes
// back through a list plus an eventfd whose pending READ on the queue's ring
// wakes the thread. A Target call that blocks (a disk or registry read) thus
// stalls only its own request. Options.InThread instead calls the Target on the
// queue thread: no hand-off, but one slow call stalls every tag of its queue.
//
// Measured in the QEMU/TCG guest of tests/vm (2 vCPUs, kernel 6.12, 4 KiB random
// O_DIRECT reads from an io_uring load generator; tests/vm/bench-ublk.sh;
// TCG varies ±50 % between runs, so two runs are shown as ranges):
//
//	BenchmarkServeMode   QD   in-thread IOPS   workers IOPS   workers/in-thread
//	RAM target            1     1900–2400       1250–2200        0.52–1.18
//	RAM target           32     8800–9500       4400–6300        0.46–0.71
//	200 µs reads          1      235–260         165–220         0.70–0.84
//	200 µs reads         32      420–550        1150–3100        2.8–5.7
//
// In-thread wins for a RAM target (no hand-off: two cross-thread wake-ups, about
// 12 µs on the dev host, BenchmarkWorkerHandoff, and far more under TCG), but the
// worker pool is 3–6× faster as soon as Target calls block, which obd's targets
// (files, remote blobs) do on a cache miss. Hence the adaptive default: in-thread
// while the Target answers from memory or the page cache, workers while it blocks.
//
// Against the kernel loop driver reading the same tmpfs file (BenchmarkVsLoop,
// ublk IOPS / loop IOPS, same runs): workers 0.25–1.7 (4K QD1), 0.63–0.82 (4K
// QD32), 0.56–0.61 (1 MiB sequential); in-thread 3.2, 1.3 and 0.78. Sequential
// reads pay one extra copy (file → tag buffer → bio); a 512 KiB MaxIOBytes
// split each 1 MiB read in two, hence the 1 MiB default.
//
// Devices created with Options.Recovery survive the death of their server as
// QUIESCED (I/O waits); Recover serves them again from a new process. List,
// Delete and CleanupOrphans manage devices left behind by dead servers.
package ublk
