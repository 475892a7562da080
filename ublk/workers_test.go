package ublk

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// More requests than workers: the surplus waits in the backlog and every tag
// completes exactly once, with the target's data in its own buffer.
func TestWorkerPoolBacklog(t *testing.T) {
	const tags, bufSize = 24, 4096
	m := newMemTarget(tags * bufSize)
	randomBytes(m.data, 3)
	descs := make([]byte, tags*descSize)
	for tag := 0; tag < tags; tag++ {
		d := (*ioDesc)(unsafe.Pointer(&descs[tag*descSize]))
		// tag reads block (tags-1-tag), so a mix-up of tags and buffers shows
		*d = ioDesc{OpFlags: opRead, NrSectors: bufSize >> 9, StartSector: uint64((tags-1-tag)*bufSize) >> 9}
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	q := &queue{depth: tags, bufSize: bufSize, descs: descs, bufs: make([]byte, tags*bufSize+8), efd: efd,
		be: newBackend(slowTarget{m, time.Millisecond}), workers: 3}
	for tag := 0; tag < tags; tag++ {
		q.dispatch(uint16(tag))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		q.mu.Lock()
		n := len(q.completed)
		q.mu.Unlock()
		if n == tags {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests completed", n, tags)
		}
		time.Sleep(time.Millisecond)
	}
	q.stopWorkers()
	seen := map[uint16]bool{}
	for _, c := range q.completed {
		if seen[c.tag] || c.result != bufSize {
			t.Errorf("completion %+v (duplicate %v)", c, seen[c.tag])
		}
		seen[c.tag] = true
		want := m.data[(tags-1-int(c.tag))*bufSize:][:bufSize]
		if !bytes.Equal(q.buf(c.tag), want) {
			t.Errorf("tag %d: buffer does not hold its block", c.tag)
		}
	}
	if q.running != 0 || len(q.backlog) != 0 {
		t.Errorf("after the run: %d calls running, %d backlogged; want 0, 0", q.running, len(q.backlog))
	}
}

// Stopping a queue with no call in flight returns promptly.
func TestWorkerPoolStop(t *testing.T) {
	q := &queue{workers: 8}
	done := make(chan struct{})
	go func() { q.stopWorkers(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stopWorkers hung")
	}
}

// gatedTarget parks every read (in Go, as a network read does) until gate is closed.
type gatedTarget struct {
	*memTarget
	gate    chan struct{}
	entered *atomic.Int64
}

func (g gatedTarget) ReadAt(p []byte, off int64) (int, error) {
	g.entered.Add(1)
	<-g.gate
	return g.memTarget.ReadAt(p, off)
}

func osThreads(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}

// The worker threads are shared by all queues: many queues, every worker slot
// busy with a call that waits, cost at most maxPooledWorkers threads, not
// queues x Workers (which made ~147 default devices hit Go's 10000-thread limit).
func TestWorkerThreadsSharedByQueues(t *testing.T) {
	const queues, workers, bufSize = 40, DefaultWorkers, 4096
	before := osThreads(t)
	m := newMemTarget(workers * bufSize)
	randomBytes(m.data, 5)
	gate := make(chan struct{})
	var entered atomic.Int64
	target := gatedTarget{m, gate, &entered}
	var qs []*queue
	for i := 0; i < queues; i++ {
		descs := make([]byte, workers*descSize)
		for tag := 0; tag < workers; tag++ {
			*(*ioDesc)(unsafe.Pointer(&descs[tag*descSize])) = ioDesc{OpFlags: opRead, NrSectors: bufSize >> 9, StartSector: uint64(tag*bufSize) >> 9}
		}
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(efd)
		q := &queue{depth: workers, bufSize: bufSize, descs: descs, bufs: make([]byte, workers*bufSize+8), efd: efd,
			be: newBackend(target), workers: workers, policy: newServePolicy(DefaultBlockThreshold)}
		qs = append(qs, q)
	}
	if idle := osThreads(t); idle > before+8 {
		t.Errorf("%d idle queues added %d threads", queues, idle-before)
	}
	for _, q := range qs {
		for tag := 0; tag < workers; tag++ {
			q.dispatch(uint16(tag))
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for entered.Load() < queues*workers {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d calls started", entered.Load(), queues*workers)
		}
		time.Sleep(5 * time.Millisecond)
	}
	busy := osThreads(t)
	t.Logf("threads: %d before, %d with %d calls waiting on %d queues", before, busy, queues*workers, queues)
	if limit := before + maxPooledWorkers + 32; busy > limit {
		t.Errorf("%d threads with %d queues busy, want <= %d", busy, queues, limit)
	}
	close(gate)
	for _, q := range qs {
		for {
			q.mu.Lock()
			n := len(q.completed)
			q.mu.Unlock()
			if n == workers {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d requests completed", n, workers)
			}
			time.Sleep(time.Millisecond)
		}
		q.stopWorkers()
		for _, c := range q.completed {
			if c.result != bufSize || !bytes.Equal(q.buf(c.tag), m.data[int(c.tag)*bufSize:][:bufSize]) {
				t.Fatalf("tag %d: result %d or data wrong", c.tag, c.result)
			}
		}
	}
}

// The thread budget check reads this process's threads (and cgroup limit) and
// refuses a device only near a limit.
func TestThreadBudget(t *testing.T) {
	n, err := procThreads()
	if err != nil || n < 1 {
		t.Fatalf("procThreads = %d, %v", n, err)
	}
	if err := checkThreadBudget(DefaultMaxQueues); err != nil {
		t.Fatalf("a test process with %d threads is refused: %v", n, err)
	}
	if err := checkThreadBudget(goMaxThreads); err == nil {
		t.Fatal("a device with goMaxThreads queue threads passed the budget")
	}
}

// Control commands run on throwaway threads: their io-wq workers (one per
// submitting thread, kept for the thread's life) exit with them.
func TestThrowawayThreadsExit(t *testing.T) {
	before := osThreads(t)
	for i := 0; i < 50; i++ {
		onThrowawayThread(func() {})
	}
	deadline := time.Now().Add(10 * time.Second)
	for osThreads(t) > before+5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d threads before, %d after 50 throwaway threads", before, osThreads(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
