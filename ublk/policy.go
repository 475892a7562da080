package ublk

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// servePolicy decides, per request, whether the queue thread calls the Target
// itself or hands the request to the worker pool (the default, adaptive mode).
//
// Calling the Target on the queue thread saves the hand-off (a futex wake, a
// context switch and an eventfd write: BenchmarkWorkerHandoff), which is most of
// a request's cost when the Target answers from memory or the page cache. It is
// wrong only while the Target blocks: then every other tag of the queue waits.
// So every call, inline or on a worker, measures how long it spent off the CPU
// (wall time minus thread CPU time). A call blocked if its thread went to sleep
// (a voluntary context switch: waiting for a disk, the network, a lock) and was
// off the CPU longer than threshold and longer than it computed. The last rule
// keeps a Target that splits its work among goroutines and waits for them
// inline; being preempted is no voluntary switch. After a call blocked,
// requests go to the pool until holdoff has passed without one.
type servePolicy struct {
	threshold time.Duration
	holdoff   time.Duration
	epoch     time.Time     // origin of lastBlocked
	blockedAt atomic.Int64  // ns since epoch of the last blocking call; < 0: never
	blocks    atomic.Uint64 // blocking calls seen, for benchmarks
	calls     atomic.Uint64 // calls started, for sampling
	burst     atomic.Int32  // calls still to sample after a long one
}

// Defaults for the adaptive serve mode. The threshold is 1 ms, not tens of µs:
// the Go runtime itself parks a thread that returns from a long syscall without
// a free P (a voluntary switch of a few hundred µs, far more under emulation),
// and thread CPU time is only tick-accurate on many kernels. With 50 µs a
// page-cache-backed image kept falling back to the pool (BenchmarkImageVsLoop in
// the VM: 4K QD32 0.23 of loop vs 0.53 with 1 ms); a registry or disk miss still
// blocks for milliseconds and is caught.
const (
	DefaultBlockThreshold = time.Millisecond
	blockHoldoff          = time.Second
	sampleEvery           = 16
	sampleBurst           = 8
)

func newServePolicy(threshold time.Duration) *servePolicy {
	p := &servePolicy{threshold: threshold, holdoff: blockHoldoff, epoch: time.Now()}
	p.blockedAt.Store(-1)
	return p
}

// inline reports whether the next request may be served on the queue thread.
func (p *servePolicy) inline() bool {
	b := p.blockedAt.Load()
	return b < 0 || time.Since(p.epoch)-time.Duration(b) > p.holdoff
}

// callStart is taken before a Target call by a thread locked to its goroutine.
type callStart struct {
	wall    time.Duration // since epoch
	usage   threadUsage
	sampled bool // usage was read
}

// start times a call. Reading the thread's usage costs a syscall at each end of
// the call, which under emulation costs a third of a 4 KiB request's time; so only
// one call in sampleEvery reads it, and, after a call that took longer than
// threshold, the next sampleBurst calls do: a Target that really blocks does so
// again and is caught on its next call, while the odd long call of a fast Target
// (preemption) costs a few sampled calls.
func (p *servePolicy) start() callStart {
	s := callStart{wall: time.Since(p.epoch)}
	if p.burst.Load() > 0 || p.calls.Add(1)%sampleEvery == 0 {
		s.sampled, s.usage = true, getThreadUsage()
	}
	return s
}

// done records a call begun at s on the same thread.
func (p *servePolicy) done(s callStart) {
	wall := time.Since(p.epoch)
	took := wall - s.wall
	if !s.sampled {
		if took > p.threshold {
			p.burst.Store(sampleBurst)
		}
		return
	}
	if p.burst.Load() > 0 {
		p.burst.Add(-1)
	}
	u := getThreadUsage()
	cpu := u.cpu - s.usage.cpu
	p.observe(wall, took-cpu, cpu, u.sleeps != s.usage.sleeps)
}

// observe records a call ending at now (since epoch) that was off the CPU for
// offCPU, computed for cpu and went to sleep if slept.
func (p *servePolicy) observe(now, offCPU, cpu time.Duration, slept bool) {
	if slept && offCPU > p.threshold && offCPU > cpu {
		p.blockedAt.Store(int64(now))
		p.blocks.Add(1)
	}
}

type threadUsage struct {
	cpu    time.Duration // user + system
	sleeps int64         // voluntary context switches
}

// getThreadUsage reads the calling thread's counters. getrusage(RUSAGE_THREAD)
// cannot fail for the calling thread; if it did, the zero value would make the
// next call look blocked or not, costing speed, never correctness.
func getThreadUsage() threadUsage {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	return threadUsage{
		cpu:    time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		sleeps: ru.Nvcsw,
	}
}
