package ublk

import (
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// worker is one goroutine of a queue's pool of Target callers. It sleeps in
// FUTEX_WAIT on its own word instead of on a channel: a channel send from the
// queue thread queues the woken goroutine on the queue thread's P, which then
// blocks in io_uring_enter, so the worker waits for the Go scheduler to notice
// (≈40 µs on the dev host), while a futex wake takes a few µs
// (BenchmarkWorkerHandoff).
type worker struct {
	q     *queue
	state uint32 // futex word, atomic: 1 = tag assigned (or stop), 0 = idle
	tag   uint16 // written by the queue thread before state becomes 1
}

const (
	futexWaitPrivate = 128 // FUTEX_WAIT | FUTEX_PRIVATE_FLAG
	futexWakePrivate = 129 // FUTEX_WAKE | FUTEX_PRIVATE_FLAG
)

func futexWait(addr *uint32, val uint32) {
	// EINTR, EAGAIN (value changed) and spurious wake-ups all just return: callers loop.
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitPrivate, uintptr(val), 0, 0, 0)
}

func futexWake(addr *uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakePrivate, 1, 0, 0, 0)
}

// startWorkers creates n idle workers.
func (q *queue) startWorkers(n int) {
	q.pool = make([]*worker, n)
	q.mu.Lock()
	for i := range q.pool {
		w := &worker{q: q}
		q.pool[i] = w
		q.idle = append(q.idle, w)
	}
	q.mu.Unlock()
	q.workersWG.Add(n)
	for _, w := range q.pool {
		go w.run()
	}
}

// stopWorkers ends every worker once its current call returns.
func (q *queue) stopWorkers() {
	q.stopping.Store(true)
	for _, w := range q.pool {
		atomic.StoreUint32(&w.state, 1)
		futexWake(&w.state)
	}
	q.workersWG.Wait()
}

// dispatch hands tag to an idle worker, or queues it for the next one to finish.
// Called only by the queue thread.
func (q *queue) dispatch(tag uint16) {
	q.mu.Lock()
	n := len(q.idle)
	if n == 0 {
		q.backlog = append(q.backlog, tag)
		q.mu.Unlock()
		return
	}
	w := q.idle[n-1]
	q.idle = q.idle[:n-1]
	q.mu.Unlock()
	w.tag = tag
	atomic.StoreUint32(&w.state, 1)
	futexWake(&w.state)
}

func (w *worker) run() {
	q := w.q
	defer q.workersWG.Done()
	if q.policy != nil {
		// Thread CPU time measures only this call's work if the goroutine keeps
		// its thread; it does anyway, sleeping in a raw futex syscall.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	for {
		for atomic.LoadUint32(&w.state) == 0 {
			if q.stopping.Load() { // checked before sleeping: a stop may have raced our reset below
				return
			}
			futexWait(&w.state, 0)
		}
		if q.stopping.Load() {
			return
		}
		tag := w.tag
		atomic.StoreUint32(&w.state, 0)
		for more := true; more; {
			var res int32
			if q.policy != nil {
				s := q.policy.start()
				res = q.be.serve(q.desc(tag), q.buf(tag))
				q.policy.done(s)
			} else {
				res = q.be.serve(q.desc(tag), q.buf(tag))
			}
			tag, more = q.finish(w, tag, res)
		}
	}
}

// finish records a result for the queue thread (waking it with one eventfd
// write per batch) and gives the worker the next backlogged tag, if any;
// otherwise the worker (nil in tests) goes back to the idle list.
func (q *queue) finish(w *worker, tag uint16, result int32) (next uint16, more bool) {
	q.mu.Lock()
	q.completed = append(q.completed, completion{tag, result})
	wake := !q.signalled
	q.signalled = true
	if len(q.backlog) > 0 {
		next, more = q.backlog[0], true
		q.backlog = q.backlog[1:]
	} else if w != nil {
		q.idle = append(q.idle, w)
	}
	q.mu.Unlock()
	if wake {
		q.wake()
	}
	return next, more
}
