package ublk

// A minimal io_uring over raw syscalls, written from include/uapi/linux/io_uring.h:
// just what ublk needs (URING_CMD, a READ on an eventfd, NOP for tests).

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	ioringOffSQRing = 0x0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringFeatSingleMmap = 1 << 0
	ioringFeatExtArg     = 1 << 8
	ioringFeatCQESkip    = 1 << 11

	ioringSetupCQSize       = 1 << 3
	ioringSetupCoopTaskrun  = 1 << 8
	ioringSetupSQE128       = 1 << 10
	ioringSetupSingleIssuer = 1 << 12
	ioringSetupDeferTaskrun = 1 << 13

	ioringEnterGetEvents = 1 << 0
	ioringEnterExtArg    = 1 << 3

	ioringOpNop       = 0
	ioringOpReadFixed = 4
	ioringOpRead      = 22
	ioringOpURingCmd  = 46

	iosqeFixedFile      = 1 << 0
	iosqeIOLink         = 1 << 2
	iosqeCQESkipSuccess = 1 << 6

	ioringRegisterFiles    = 2
	ioringRegisterBuffers2 = 15
	ioringRsrcSparse       = 1 << 0

	sqeCmdOffset = 48 // the command area of an SQE (16 bytes, 80 with SQE128)
)

type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type uringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqringOffsets
	CQOff                                                                  cqringOffsets
}

// sqe is struct io_uring_sqe (64 bytes). For URING_CMD, Off holds cmd_op in its
// low 32 bits; the command payload starts at sqeCmdOffset.
type sqe struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	Fd          int32
	Off         uint64
	Addr        uint64
	Len         uint32
	OpFlags     uint32
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	SpliceFdIn  int32
	Cmd         [16]byte
}

// cqe is struct io_uring_cqe (16 bytes; no CQE32).
type cqe struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

var (
	_ [unsafe.Sizeof(uringParams{}) - 120]byte
	_ [120 - unsafe.Sizeof(uringParams{})]byte
	_ [unsafe.Sizeof(sqe{}) - 64]byte
	_ [64 - unsafe.Sizeof(sqe{})]byte
	_ [unsafe.Sizeof(cqe{}) - 16]byte
	_ [16 - unsafe.Sizeof(cqe{})]byte
)

// Ring index arithmetic. Heads and tails are free-running uint32 counters; the
// slot is counter&mask. Pure functions so wrap-around is testable on any host.

// sqFree is how many SQEs can be queued when the kernel has consumed up to head
// and we have filled up to tail.
func sqFree(head, tail, entries uint32) uint32 { return entries - (tail - head) }

// cqReady is how many CQEs wait between head and tail.
func cqReady(head, tail uint32) uint32 { return tail - head }

// ringSize rounds n up to the power of two io_uring uses for ring entries.
func ringSize(n uint32) uint32 {
	s := uint32(1)
	for s < n {
		s <<= 1
	}
	return s
}

// errRingFull is returned when no SQE is free; callers size rings so that it
// means a bookkeeping bug.
var errRingFull = errors.New("ublk: io_uring submission queue full")

// ring is one io_uring instance. It is not safe for concurrent use: each ring
// belongs to one goroutine (a queue thread, or the control path under a mutex).
type ring struct {
	fd        int
	sqeSize   uintptr
	sqMem     []byte
	cqMem     []byte
	sqeMem    []byte
	sqHead    *uint32
	sqTail    *uint32
	sqMask    uint32
	sqEntries uint32
	cqHead    *uint32
	cqTail    *uint32
	cqMask    uint32
	cqes      unsafe.Pointer
	sqes      unsafe.Pointer
	tail      uint32 // our SQ tail, published by submit

	// deferTaskrun: task work (ublk's request delivery, which copies a WRITE's
	// data into its tag buffer) runs only inside this ring's io_uring_enter.
	deferTaskrun bool
	extArg       bool         // io_uring_enter takes a wait timeout (5.11+)
	cqeSkip      bool         // IOSQE_CQE_SKIP_SUCCESS is honoured (5.17+)
	waitArg      getEventsArg // for submitTimeout: the kernel reads it during the call
	waitTS       unix.Timespec
}

// getEventsArg is struct io_uring_getevents_arg.
type getEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWait   uint32
	ts        uint64
}

// newRing sets up an io_uring with entries SQEs and flags (IORING_SETUP_*).
func newRing(entries, flags uint32) (*ring, error) {
	var p uringParams
	p.Flags = flags
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup(entries=%d, flags=%#x): %w", entries, flags, errno)
	}
	r := &ring{fd: int(fd), sqeSize: 64, deferTaskrun: flags&ioringSetupDeferTaskrun != 0, extArg: p.Features&ioringFeatExtArg != 0,
		cqeSkip: p.Features&ioringFeatCQESkip != 0}
	if flags&ioringSetupSQE128 != 0 {
		r.sqeSize = 128
	}
	sqSize := int(p.SQOff.Array) + int(p.SQEntries)*4
	cqSize := int(p.CQOff.CQEs) + int(p.CQEntries)*int(unsafe.Sizeof(cqe{}))
	single := p.Features&ioringFeatSingleMmap != 0
	if single && cqSize > sqSize {
		sqSize = cqSize
	}
	prot, mflags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, ioringOffSQRing, sqSize, prot, mflags); err != nil {
		r.close()
		return nil, fmt.Errorf("io_uring: mmap SQ ring: %w", err)
	}
	if single {
		r.cqMem = r.sqMem
	} else if r.cqMem, err = unix.Mmap(r.fd, ioringOffCQRing, cqSize, prot, mflags); err != nil {
		r.close()
		return nil, fmt.Errorf("io_uring: mmap CQ ring: %w", err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, ioringOffSQEs, int(p.SQEntries)*int(r.sqeSize), prot, mflags); err != nil {
		r.close()
		return nil, fmt.Errorf("io_uring: mmap SQEs: %w", err)
	}
	sq := unsafe.Pointer(&r.sqMem[0])
	cq := unsafe.Pointer(&r.cqMem[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.SQOff.Head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.SQOff.Tail))
	r.sqMask = *(*uint32)(unsafe.Add(sq, p.SQOff.RingMask))
	r.sqEntries = *(*uint32)(unsafe.Add(sq, p.SQOff.RingEntries))
	// Slot i of the SQ index array always names SQE i.
	for i := uint32(0); i < r.sqEntries; i++ {
		*(*uint32)(unsafe.Add(sq, uintptr(p.SQOff.Array)+uintptr(i)*4)) = i
	}
	r.cqHead = (*uint32)(unsafe.Add(cq, p.CQOff.Head))
	r.cqTail = (*uint32)(unsafe.Add(cq, p.CQOff.Tail))
	r.cqMask = *(*uint32)(unsafe.Add(cq, p.CQOff.RingMask))
	r.cqes = unsafe.Add(cq, p.CQOff.CQEs)
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	r.tail = atomic.LoadUint32(r.sqTail)
	return r, nil
}

func (r *ring) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
		r.sqeMem = nil
	}
	if r.cqMem != nil && (r.sqMem == nil || &r.cqMem[0] != &r.sqMem[0]) {
		unix.Munmap(r.cqMem)
	}
	r.cqMem = nil
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
		r.sqMem = nil
	}
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// getSQE returns a zeroed SQE (its first 64 bytes as *sqe; with SQE128 the full
// 128 bytes are zeroed and usable through cmdArea), or errRingFull.
func (r *ring) getSQE() (*sqe, error) {
	if sqFree(atomic.LoadUint32(r.sqHead), r.tail, r.sqEntries) == 0 {
		return nil, errRingFull
	}
	p := unsafe.Add(r.sqes, uintptr(r.tail&r.sqMask)*r.sqeSize)
	clear(unsafe.Slice((*byte)(p), r.sqeSize))
	r.tail++
	return (*sqe)(p), nil
}

// free reports how many SQEs can be queued before the next submit.
func (r *ring) free() uint32 { return sqFree(atomic.LoadUint32(r.sqHead), r.tail, r.sqEntries) }

// cmdArea is the command payload of a URING_CMD SQE (16 bytes, or 80 with SQE128).
func cmdArea(s *sqe) unsafe.Pointer { return unsafe.Add(unsafe.Pointer(s), sqeCmdOffset) }

// pending reports how many SQEs were queued but not yet consumed by the kernel.
func (r *ring) pending() uint32 { return r.tail - atomic.LoadUint32(r.sqHead) }

// submit publishes queued SQEs and enters the kernel, waiting for at least
// wait completions. EINTR (Go's preemption signals) is retried.
func (r *ring) submit(wait uint32) error {
	atomic.StoreUint32(r.sqTail, r.tail)
	var flags uintptr
	if wait > 0 {
		flags = ioringEnterGetEvents
	}
	for {
		toSubmit := r.pending()
		if toSubmit == 0 && wait == 0 {
			return nil
		}
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("io_uring_enter: %w", errno)
	}
}

// submitTimeout is submit(1) that returns after timeout even if nothing
// completed (then the CQ is empty). Needs r.extArg.
func (r *ring) submitTimeout(timeout time.Duration) error {
	atomic.StoreUint32(r.sqTail, r.tail)
	r.waitTS = unix.NsecToTimespec(timeout.Nanoseconds())
	r.waitArg = getEventsArg{ts: uint64(uintptr(unsafe.Pointer(&r.waitTS)))}
	for {
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.pending()), 1,
			ioringEnterGetEvents|ioringEnterExtArg, uintptr(unsafe.Pointer(&r.waitArg)), unsafe.Sizeof(r.waitArg))
		switch errno {
		case 0, unix.ETIME:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("io_uring_enter: %w", errno)
	}
}

// ready reports how many CQEs wait to be reaped.
func (r *ring) ready() uint32 {
	return cqReady(atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail))
}

// reap calls fn for each completed CQE, in order, and releases its slot first so
// that fn may queue new SQEs.
func (r *ring) reap(fn func(c cqe)) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	n := int(cqReady(head, tail))
	for ; head != tail; head++ {
		c := *(*cqe)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*unsafe.Sizeof(cqe{})))
		atomic.StoreUint32(r.cqHead, head+1)
		fn(c)
	}
	return n
}

// registerFiles installs fds as the ring's fixed-file table (IOSQE_FIXED_FILE index i = fds[i]).
func (r *ring) registerFiles(fds []int32) error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), ioringRegisterFiles,
		uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), 0, 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_register(FILES): %w", errno)
	}
	return nil
}

// rsrcRegister is struct io_uring_rsrc_register.
type rsrcRegister struct {
	Nr    uint32
	Flags uint32
	Resv2 uint64
	Data  uint64
	Tags  uint64
}

// registerSparseBuffers installs an empty fixed-buffer table of n slots, for
// buffers the kernel registers itself (ublk's AUTO_BUF_REG).
func (r *ring) registerSparseBuffers(n uint32) error {
	reg := rsrcRegister{Nr: n, Flags: ioringRsrcSparse}
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), ioringRegisterBuffers2,
		uintptr(unsafe.Pointer(&reg)), unsafe.Sizeof(reg), 0, 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_register(BUFFERS2, sparse %d): %w", n, errno)
	}
	return nil
}
