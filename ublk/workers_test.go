package ublk

import (
	"bytes"
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
		be: newBackend(slowTarget{m, time.Millisecond})}
	q.startWorkers(3)
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
	if len(q.idle) != 3 || len(q.backlog) != 0 {
		t.Errorf("after the run: %d idle workers, %d backlogged; want 3, 0", len(q.idle), len(q.backlog))
	}
}

// Stopping idle workers returns promptly (no worker left asleep on its futex).
func TestWorkerPoolStop(t *testing.T) {
	q := &queue{}
	q.startWorkers(8)
	done := make(chan struct{})
	go func() { q.stopWorkers(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stopWorkers hung")
	}
}
