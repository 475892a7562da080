package ublk

import (
	"runtime"
	"testing"
	"time"
)

func TestServePolicy(t *testing.T) {
	p := newServePolicy(50 * time.Microsecond)
	if !p.inline() {
		t.Fatal("a fresh policy serves in the queue thread")
	}
	for _, c := range []struct {
		offCPU, cpu time.Duration
		slept       bool
		why         string
	}{
		{49 * time.Microsecond, 0, true, "a sleep below the threshold"},
		{time.Millisecond, 0, false, "preemption (no sleep)"},
		{time.Millisecond, 2 * time.Millisecond, true, "waiting less than computing"},
	} {
		p.observe(time.Since(p.epoch), c.offCPU, c.cpu, c.slept)
		if !p.inline() {
			t.Fatalf("%s switched to the pool", c.why)
		}
	}
	p.observe(time.Since(p.epoch), 51*time.Microsecond, 10*time.Microsecond, true)
	if p.inline() {
		t.Fatal("a blocking call did not switch to the pool")
	}
	// Once holdoff has passed without another blocking call, serve inline again.
	p.blockedAt.Store(int64(time.Since(p.epoch) - p.holdoff - time.Millisecond))
	if !p.inline() {
		t.Fatal("still in the pool after the holdoff")
	}
}

// A call that sleeps is off the CPU; one that computes is not. This is what lets
// a page-cache or decompressing Target stay on the queue thread while a Target
// that waits for a disk or the network moves to the pool.
func TestServePolicyMeasuresOffCPU(t *testing.T) {
	p := newServePolicy(2 * time.Millisecond)
	p.holdoff = time.Hour
	p.burst.Store(1 << 30) // sample every call: this test is about the measurement
	lockedCall := func(fn func()) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Keep the thread (as queue threads and workers do) so its CPU clock is ours.
			runtime.LockOSThread() // the goroutine exits with it: the thread is discarded
			s := p.start()
			fn()
			p.done(s)
		}()
		<-done
	}
	// The OS may preempt the spinning thread on a busy host (that is off-CPU
	// time too): one attempt of three must see no blocking.
	for try := 0; ; try++ {
		p.blockedAt.Store(-1)
		lockedCall(func() {
			for end := time.Now().Add(20 * time.Millisecond); time.Now().Before(end); {
			}
		})
		if p.inline() {
			break
		}
		if try == 2 {
			t.Fatal("20 ms of computing counted as blocking, three times")
		}
	}
	lockedCall(func() { time.Sleep(20 * time.Millisecond) })
	if p.inline() {
		t.Fatal("a 20 ms sleep did not count as blocking")
	}
}

// Only some calls read the thread's usage, but a Target that blocks is caught by
// its second blocking call at the latest, and fast calls are rarely sampled.
func TestServePolicySampling(t *testing.T) {
	p := newServePolicy(time.Millisecond)
	p.holdoff = time.Hour
	sampled := 0
	call := func(fn func()) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread()
			s := p.start()
			if s.sampled {
				sampled++
			}
			fn()
			p.done(s)
		}()
		<-done
	}
	for i := 0; i < 160; i++ {
		call(func() {})
	}
	if sampled > 160/sampleEvery+sampleBurst {
		t.Errorf("%d of 160 fast calls sampled, want about %d", sampled, 160/sampleEvery)
	}
	for i := 0; i < 2 && p.inline(); i++ {
		call(func() { time.Sleep(10 * time.Millisecond) })
	}
	if p.inline() {
		t.Fatal("two 10 ms sleeps did not move the queue to the pool")
	}
}
