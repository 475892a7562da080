package ublk

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// eventUserData marks the CQE of the eventfd read that wakes a queue thread
// when workers have finished requests (or the queue is abandoned). Tag CQEs carry the tag (< 4096).
const eventUserData = 1 << 32

// queue is one hardware queue: one locked OS thread, one io_uring, depth tags,
// each with its own buffer in an anonymous mmap (the GC never moves it).
type queue struct {
	id      int
	depth   int
	bufSize int
	cdevFd  int
	legacy  bool
	be      *backend
	cpus    *unix.CPUSet
	descs   []byte // read-only mmap of the kernel's ublksrv_io_desc array
	bufs    []byte // depth*bufSize tag buffers, then 8 bytes for the eventfd read
	ring    *ring
	exited  chan struct{} // closed when run returns; err is then set
	err     error

	// Worker mode (workers.go): up to workers requests run on the shared
	// worker pool, the rest wait in the backlog; finished ones come back via
	// completed and a write to efd, whose pending READ on the ring wakes the
	// queue thread. mu guards running, backlog, completed and signalled.
	workers   int
	policy    *servePolicy // adaptive mode: inline while the Target does not block; nil otherwise
	running   int          // calls in flight
	backlog   []uint16
	stopping  atomic.Bool
	calls     sync.WaitGroup // one per call in flight
	efd       int
	mu        sync.Mutex
	completed []completion
	quit      atomic.Bool
	served    atomic.Uint64 // requests received, for QueueRequests
	enters    atomic.Uint64 // io_uring_enter calls of the serving loop (BenchmarkImageVsLoop's enters/op)
	spare     []completion  // owned by the queue thread between swaps
	signalled bool

	// Backing-file reads on the ring (fileread.go), when the Target maps reads
	// to local files: per-tag state, and how many requests were served so.
	reads     []tagRead
	ringReads atomic.Uint64
	// linkReads: reads are chained to their COMMIT (fileread.go's queueLinked)
	// on rings that skip the CQEs of successful reads; linkedN counts those
	// chains, rereadN the ones a failed or short read broke (served by ReadAt).
	linkReads bool
	noLinks   bool         // Options.noLinkedReads
	nowaitFds map[int]bool // fd -> on a nowaitFS file system (fileread.go's smallOnRing)
	linkedN   atomic.Uint64
	rereadN   atomic.Uint64

	// Zero copy (UBLK_F_AUTO_BUF_REG with USER_COPY, fileread.go): the kernel
	// registers each request's pages as fixed buffer <tag> of the ring, file
	// reads land there directly, and other data moves by user copy (userCopy:
	// pread/pwrite on /dev/ublkcN) instead of the kernel's copy to the tag buffer.
	userCopy  bool
	autoBuf   bool
	zeroFd    int           // /dev/zero, to zero a hole in a request's pages; -1 when not open
	zeroCopyN atomic.Uint64 // requests read straight into their pages
}

type completion struct {
	tag    uint16
	result int32
}

func (q *queue) desc(tag uint16) ioDesc {
	return *(*ioDesc)(unsafe.Pointer(&q.descs[int(tag)*descSize]))
}

func (q *queue) buf(tag uint16) []byte {
	return q.bufs[int(tag)*q.bufSize : (int(tag)+1)*q.bufSize : (int(tag)+1)*q.bufSize]
}

// mapQueue maps queue qid's descriptors and allocates its buffers.
func mapQueue(q *queue) error {
	page := os.Getpagesize()
	var err error
	q.zeroFd = -1
	q.descs, err = unix.Mmap(q.cdevFd, descMmapOffset(q.id, page), descMmapLen(q.depth, page), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("ublk: queue %d: mmap descriptors: %w", q.id, err)
	}
	q.bufs, err = unix.Mmap(-1, 0, q.depth*q.bufSize+page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		unix.Munmap(q.descs)
		q.descs = nil
		return fmt.Errorf("ublk: queue %d: mmap %d buffer bytes: %w", q.id, q.depth*q.bufSize, err)
	}
	if q.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		q.efd = -1
		q.unmap()
		return fmt.Errorf("ublk: queue %d: eventfd: %w", q.id, err)
	}
	if q.autoBuf && q.reads != nil {
		if q.zeroFd, err = unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			q.zeroFd = -1
			q.unmap()
			return fmt.Errorf("ublk: queue %d: %w", q.id, err)
		}
	}
	return nil
}

func (q *queue) unmap() {
	if q.descs != nil {
		unix.Munmap(q.descs)
		q.descs = nil
	}
	if q.bufs != nil {
		unix.Munmap(q.bufs)
		q.bufs = nil
	}
	if q.efd >= 0 {
		unix.Close(q.efd)
		q.efd = -1
	}
	if q.zeroFd >= 0 {
		unix.Close(q.zeroFd)
		q.zeroFd = -1
	}
}

// newQueueRing prefers SINGLE_ISSUER|DEFER_TASKRUN (task work runs only when
// this thread enters the kernel, which it does anyway), then COOP_TASKRUN.
func newQueueRing(entries uint32) (*ring, error) {
	var err error
	for _, flags := range []uint32{ioringSetupSingleIssuer | ioringSetupDeferTaskrun, ioringSetupCoopTaskrun, 0} {
		var r *ring
		if r, err = newRing(entries, flags); err == nil {
			return r, nil
		}
		if !errors.Is(err, unix.EINVAL) {
			break
		}
	}
	return nil, err
}

func (q *queue) queueCmd(nr uint32, tag uint16, result int32) error {
	s, err := q.ring.getSQE()
	if err != nil {
		return err
	}
	q.fillCmd(s, nr, tag, result)
	return nil
}

// fillCmd makes s the data-plane command nr (FETCH_REQ, COMMIT_AND_FETCH_REQ) of tag.
func (q *queue) fillCmd(s *sqe, nr uint32, tag uint16, result int32) {
	s.Opcode = ioringOpURingCmd
	s.Flags = iosqeFixedFile
	s.Fd = 0 // index 0 of the registered files: /dev/ublkcN
	s.Off = uint64(ioOp(nr, q.legacy))
	s.UserData = uint64(tag)
	c := (*ioCmd)(cmdArea(s))
	c.QID = uint16(q.id)
	c.Tag = tag
	c.Result = result
	switch {
	case q.autoBuf: // the buffer to register: index <tag> of the ring's table
		s.Addr = uint64(tag) | autoBufFallback<<16
	case q.userCopy: // no buffer: data moves by user copy
	default:
		c.Addr = uint64(uintptr(unsafe.Pointer(&q.buf(tag)[0])))
	}
}

// serve runs tag's request against the Target. With user copy it first fetches
// a WRITE's data from the request, and hands a READ's data to it afterwards.
func (q *queue) serve(tag uint16) int32 {
	d, buf := q.desc(tag), q.buf(tag)
	if !q.userCopy {
		return q.be.serve(d, buf)
	}
	n := int(d.NrSectors) << 9
	if d.op() == opWrite && n <= len(buf) && q.userCopyIO(unix.Pread, tag, buf[:n]) != nil {
		return errIO
	}
	res := q.be.serve(d, buf)
	if d.op() == opRead && res > 0 && q.userCopyIO(unix.Pwrite, tag, buf[:res]) != nil {
		return errIO
	}
	return res
}

// userCopyIO moves p between the tag buffer and request tag's pages.
func (q *queue) userCopyIO(rw func(int, []byte, int64) (int, error), tag uint16, p []byte) error {
	off := ioBufOffset(q.id, tag)
	for done := 0; done < len(p); {
		n, err := rw(q.cdevFd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.EIO
		}
		done += n
	}
	return nil
}

// armEvent queues a read of the eventfd counter into the 8 bytes after the tag buffers.
func (q *queue) armEvent() error {
	s, err := q.ring.getSQE()
	if err != nil {
		return err
	}
	s.Opcode = ioringOpRead
	s.Fd = int32(q.efd)
	s.Addr = uint64(uintptr(unsafe.Pointer(&q.bufs[q.depth*q.bufSize])))
	s.Len = 8
	s.Off = ^uint64(0) // current file position (eventfds have none)
	s.UserData = eventUserData
	return nil
}

func (q *queue) wake() {
	one := [8]byte{1}
	unix.Write(q.efd, one[:])
}

// abandon makes the queue thread return without waiting for the kernel to abort
// its tags: for a device that never started, where STOP_DEV aborts nothing.
// Closing the ring then cancels the pending FETCHes.
func (q *queue) abandon() {
	q.quit.Store(true)
	q.wake()
}

// run is the queue thread. It must own its OS thread for the queue's whole life:
// the kernel binds the queue to the task that issued its FETCH_REQs and rejects
// commands from any other. ready gets nil once every FETCH is submitted (or the
// setup error); the return value is the error that ended serving, if any.
func (q *queue) run(ready chan<- error) error {
	runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
	// Memory reclaim must not wait on writeback to our own device while we serve it.
	_ = unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0)
	if q.cpus != nil {
		_ = unix.SchedSetaffinity(0, q.cpus) // best effort: a cgroup may forbid these CPUs
	}
	setup := func() error {
		var err error
		entries := uint32(q.depth) + 1
		if q.reads != nil {
			entries = 2*uint32(q.depth) + 1 // room for file reads next to the commands
		}
		if q.ring, err = newQueueRing(ringSize(entries)); err != nil {
			return err
		}
		if err = q.ring.registerFiles([]int32{int32(q.cdevFd)}); err != nil {
			return err
		}
		q.linkReads = q.reads != nil && q.ring.cqeSkip && !q.noLinks
		if q.autoBuf {
			if err = q.ring.registerSparseBuffers(uint32(q.depth)); err != nil {
				return err
			}
		}
		for t := 0; t < q.depth; t++ {
			if err = q.queueCmd(nrFetchReq, uint16(t), 0); err != nil {
				return err
			}
		}
		if err = q.armEvent(); err != nil {
			return err
		}
		return q.ring.submit(0)
	}
	if err := setup(); err != nil {
		if q.ring != nil {
			q.ring.close()
		}
		ready <- fmt.Errorf("ublk: queue %d: %w", q.id, err)
		return nil
	}
	ready <- nil
	defer q.ring.close()
	if q.workers > 0 {
		defer q.stopWorkers()
	}
	live := q.depth // tags not yet aborted by the kernel
	// Buffer release (releaseBuffers): requests not yet committed, and whether a
	// large request touched the buffers since the last release.
	inFlight, dirty := 0, false
	canRelease := q.ring.deferTaskrun && q.ring.extArg && !q.legacy
	var loopErr error
	received := func(tag uint16) {
		inFlight++
		if d := q.desc(tag); (d.op() == opRead || d.op() == opWrite) && int(d.NrSectors)<<9 > releaseMin {
			dirty = true
		}
	}
	// reread serves tag, whose reads on the ring failed, through the Target.
	reread := func(tag uint16) {
		if q.workers > 0 {
			q.dispatch(tag)
			return
		}
		loopErr = q.queueCmd(nrCommitAndFetch, tag, q.serve(tag))
		inFlight--
	}
	handle := func(c cqe) {
		if loopErr != nil {
			return
		}
		if c.UserData == eventUserData {
			if q.quit.Load() {
				loopErr = errAbandoned
				return
			}
			if c.Res < 0 { // re-arming would spin on the same error
				loopErr = fmt.Errorf("ublk: queue %d: eventfd read: %w", q.id, unix.Errno(-c.Res))
				return
			}
			q.mu.Lock()
			done := q.completed
			q.completed, q.spare = q.spare[:0], nil // swap buffers: workers never see done again
			q.signalled = false
			q.mu.Unlock()
			for _, d := range done {
				if loopErr = q.queueCmd(nrCommitAndFetch, d.tag, d.result); loopErr != nil {
					return
				}
			}
			inFlight -= len(done)
			q.spare = done
			loopErr = q.armEvent()
			return
		}
		if c.UserData&linkedUserData != 0 && (c.UserData&fileReadUserData != 0 || c.Res == -int32(unix.ECANCELED)) {
			// A CQE of a read chained to its COMMIT (only the last read of a
			// copy-mode chain posts on success), or a cancelled COMMIT.
			tag, chainDone, broken := q.linkedDone(c)
			switch {
			case chainDone && !q.autoBuf:
				inFlight--
			case broken:
				if q.autoBuf {
					inFlight++ // counted as committed when the chain was queued
				}
				reread(tag)
			}
			return
		}
		if c.UserData&fileReadUserData != 0 {
			tag, done, res, err := q.fileReadDone(c)
			switch {
			case err != nil:
				loopErr = err
			case done && res == errIO: // a read failed: ReadAt may still answer
				q.rereadN.Add(1)
				reread(tag)
			case done:
				loopErr = q.queueCmd(nrCommitAndFetch, tag, res)
				inFlight--
			}
			return
		}
		tag := uint16(c.UserData)
		if c.Res >= 0 && q.reads != nil {
			how, res, err := q.startFileRead(tag, q.desc(tag))
			if how != readNotMapped || err != nil {
				q.served.Add(1)
				received(tag)
				switch {
				case err != nil:
					loopErr = err
				case how == readHoles:
					loopErr = q.queueCmd(nrCommitAndFetch, tag, res)
					inFlight--
				case how == readLinked && q.autoBuf:
					inFlight-- // nothing of ours is touched any more: see queueLinked
				}
				return
			}
		}
		switch {
		case c.Res == -int32(unix.ENODEV): // UBLK_IO_RES_ABORT: the queue is going away
			live--
		case c.Res < 0:
			loopErr = fmt.Errorf("ublk: queue %d tag %d: %w", q.id, tag, unix.Errno(-c.Res))
		case q.workers > 0 && (q.policy == nil || !q.policy.inline()):
			q.served.Add(1)
			received(tag)
			q.dispatch(tag)
		case q.policy != nil:
			q.served.Add(1)
			received(tag)
			s := q.policy.start()
			res := q.serve(tag)
			q.policy.done(s)
			loopErr = q.queueCmd(nrCommitAndFetch, tag, res)
			inFlight--
		default:
			q.served.Add(1)
			received(tag)
			loopErr = q.queueCmd(nrCommitAndFetch, tag, q.serve(tag))
			inFlight--
		}
	}
	for live > 0 && loopErr == nil {
		q.enters.Add(1)
		if canRelease && dirty && inFlight == 0 {
			// Every request is committed: this enter hands the last results to
			// the kernel; if nothing arrives for releaseIdle, release the buffers.
			if err := q.ring.submitTimeout(releaseIdle); err != nil {
				return fmt.Errorf("ublk: queue %d: %w", q.id, err)
			}
			if q.ring.ready() == 0 {
				q.releaseBuffers()
				dirty = false
				continue
			}
		} else if err := q.ring.submit(1); err != nil {
			return fmt.Errorf("ublk: queue %d: %w", q.id, err)
		}
		q.ring.reap(handle)
	}
	if loopErr == errAbandoned {
		return nil
	}
	return loopErr
}

var errAbandoned = errors.New("ublk: queue abandoned")

// A queue whose buffers served a request larger than releaseMin returns their
// memory once it has been idle for releaseIdle: each tag has a MaxIOBytes
// buffer (128 MiB per queue by default) and pages touched once would otherwise
// stay resident for the device's life. Only then: releasing after every large
// request would make the next one fault its pages in again.
const (
	releaseMin  = 64 << 10
	releaseIdle = time.Second
)

// releaseBuffers drops the pages of every tag buffer (they read as zeros
// again). Safe only on the queue thread while every tag waits in the kernel and
// no completion is pending, with DEFER_TASKRUN on a kernel that delivers
// requests through io_uring task work (6.5+, !legacy): the kernel then copies
// into or out of a tag buffer only inside this thread's io_uring_enter.
func (q *queue) releaseBuffers() {
	// Best effort: on failure the pages just stay resident.
	_ = unix.Madvise(q.bufs[:q.depth*q.bufSize], unix.MADV_DONTNEED)
}
