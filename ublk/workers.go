package ublk

import (
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Worker mode: a queue thread hands requests to Target callers so that a call
// that blocks stalls only its own request. Each queue allows up to
// queue.workers calls in flight (the rest wait in its backlog); the callers
// themselves come from one process-wide pool of worker threads shared by every
// queue of every device, so an idle device costs no thread beyond its queue
// threads.
//
// A pooled worker is a goroutine locked to its OS thread that sleeps in
// FUTEX_WAIT on its own word instead of on a channel: a channel send from the
// queue thread queues the woken goroutine on the queue thread's P, which then
// blocks in io_uring_enter, so the worker waits for the Go scheduler to notice
// (≈40 µs on the dev host), while a futex wake takes a few µs
// (BenchmarkWorkerHandoff). The lock also lets the adaptive policy read the
// call's own thread CPU time (policy.go). At most maxPooledWorkers such threads
// exist; when all are busy, a request runs on an ordinary goroutine (no thread
// of its own while it waits in Go; not measured by the policy, which is then in
// pool mode anyway), so many devices under load never exhaust the process's
// threads either.
type worker struct {
	state uint32 // futex word, atomic: 1 = request assigned, 0 = idle
	q     *queue // written by the dispatcher before state becomes 1
	tag   uint16
}

// maxPooledWorkers bounds the process's worker threads: enough for one device
// with the default options (DefaultMaxQueues queues of DefaultWorkers) under
// full load; beyond that requests run on ordinary goroutines.
const maxPooledWorkers = DefaultMaxQueues * DefaultWorkers

// workerPool is the process-wide set of pooled workers.
type workerPool struct {
	mu      sync.Mutex
	idle    []*worker
	threads int // pooled workers alive, idle or busy
	max     int
}

var pooled = &workerPool{max: maxPooledWorkers}

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

// assign runs tag of q on a pooled worker: an idle one, a new one while the
// pool is below its bound, else an ordinary goroutine.
func (p *workerPool) assign(q *queue, tag uint16) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w.q, w.tag = q, tag
		atomic.StoreUint32(&w.state, 1)
		futexWake(&w.state)
		return
	}
	if p.threads < p.max {
		p.threads++
		p.mu.Unlock()
		w := &worker{state: 1, q: q, tag: tag}
		go w.run(p)
		return
	}
	p.mu.Unlock()
	go q.serveTags(tag, false)
}

// release makes w idle again.
func (p *workerPool) release(w *worker) {
	p.mu.Lock()
	p.idle = append(p.idle, w)
	p.mu.Unlock()
}

// run is a pooled worker: it serves what it is assigned, then waits for more.
func (w *worker) run(p *workerPool) {
	// Never unlocked: thread CPU time then measures only this worker's calls.
	runtime.LockOSThread()
	for {
		for atomic.LoadUint32(&w.state) == 0 {
			futexWait(&w.state, 0)
		}
		atomic.StoreUint32(&w.state, 0)
		q, tag := w.q, w.tag
		w.q = nil
		q.serveTags(tag, true)
		p.release(w)
	}
}

// serveTags calls the Target for tag and then for q's backlogged tags until
// none is left. measured: the caller is locked to its thread, so the policy may
// sample the call's thread usage.
func (q *queue) serveTags(tag uint16, measured bool) {
	for more := true; more; {
		var res int32
		if measured && q.policy != nil {
			s := q.policy.start()
			res = q.serve(tag)
			q.policy.done(s)
		} else {
			res = q.serve(tag)
		}
		tag, more = q.finish(tag, res)
	}
}

// stopWorkers waits for the queue's calls in flight; backlogged tags are not
// served any more. Called by the queue thread once the kernel aborted its tags.
func (q *queue) stopWorkers() {
	q.stopping.Store(true)
	q.calls.Wait()
}

// dispatch starts a call for tag if fewer than q.workers are in flight, or
// queues it for the next call of this queue to finish. Called only by the
// queue thread.
func (q *queue) dispatch(tag uint16) {
	q.mu.Lock()
	if q.running >= q.workers {
		q.backlog = append(q.backlog, tag)
		q.mu.Unlock()
		return
	}
	q.running++
	q.mu.Unlock()
	q.calls.Add(1)
	pooled.assign(q, tag)
}

// finish records a result for the queue thread (waking it with one eventfd
// write per batch) and gives the caller the next backlogged tag, if any;
// otherwise the caller's slot is free again.
func (q *queue) finish(tag uint16, result int32) (next uint16, more bool) {
	q.mu.Lock()
	q.completed = append(q.completed, completion{tag, result})
	wake := !q.signalled
	q.signalled = true
	if len(q.backlog) > 0 && !q.stopping.Load() {
		next, more = q.backlog[0], true
		q.backlog = q.backlog[1:]
	} else {
		q.running--
	}
	q.mu.Unlock()
	if wake {
		q.wake()
	}
	if !more {
		q.calls.Done()
	}
	return next, more
}
