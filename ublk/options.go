package ublk

import (
	"fmt"
	"os"
	"runtime"
	"time"
)

// Defaults for the zero Options.
const (
	DefaultDepth      = 128
	DefaultMaxIOBytes = 1 << 20 // 512 KiB split every 1 MiB read in two requests
	DefaultMaxQueues  = 4
	DefaultWorkers    = 16
)

// Options configure a device. The zero value is a good default.
type Options struct {
	// Queues is the number of hardware queues, each served by its own locked OS
	// thread and io_uring. 0 means min(GOMAXPROCS, DefaultMaxQueues). The kernel
	// clamps it to the number of CPUs.
	Queues int
	// Depth is the number of tags (in-flight requests) per queue: 1..4096, 0 = DefaultDepth.
	Depth int
	// MaxIOBytes is the largest request and the per-tag buffer size: a multiple of
	// the page size up to 32 MiB, 0 = DefaultMaxIOBytes.
	MaxIOBytes int
	// ID asks for /dev/ublkb<ID> when SpecificID is set; otherwise the kernel picks.
	ID         uint32
	SpecificID bool
	// By default each queue calls the Target on its own thread while the Target
	// does not block, and hands requests to its Workers goroutines (completing
	// them through its ring) for a second after a call blocked, so that a
	// slow Target call does not stall the queue's other tags (policy.go).
	//
	// InThread always calls the Target on the queue thread.
	InThread bool
	// AlwaysWorkers always hands requests to the worker pool.
	AlwaysWorkers bool
	// BlockThreshold is how long a Target call may wait off the CPU (for I/O,
	// a lock, another goroutine) and still count as not blocking; 0 means
	// DefaultBlockThreshold.
	BlockThreshold time.Duration
	// Workers is the most Target calls in flight per queue when !InThread;
	// 0 = DefaultWorkers (capped at Depth). The calls run on a process-wide
	// pool of worker threads shared by all devices (workers.go).
	Workers int
	// NoRingReads makes a Target that maps reads to local files
	// (blockdev.FileMapper: local LSMT layers, a writable upper) serve them with
	// its ReadAt, like any other Target. By default the queue thread reads those
	// files itself with io_uring READs on its ring, each linked to its
	// request's completion: every READ with zero copy (see NoZeroCopy),
	// otherwise READs of 64 KiB and more, and smaller ones whose files are on
	// ext4, xfs or btrfs (on tmpfs, 6.12's io_uring hands each read to a worker
	// thread: pread measured cheaper).
	NoRingReads bool
	// NoZeroCopy keeps the kernel's copy through the tag buffers on kernels
	// that offer UBLK_F_AUTO_BUF_REG (6.17+). By default, when all of the
	// Target's data maps to local files (see NoRingReads), such a kernel
	// registers each request's pages with the queue's ring and the file reads
	// land in them directly; writes (and reads the kernel could not register)
	// move by user copy (pread/pwrite on /dev/ublkcN).
	NoZeroCopy bool
	// Recovery sets UBLK_F_USER_RECOVERY: if this process dies the device is
	// quiesced (I/O waits) instead of removed, and Recover can serve it again.
	Recovery bool
	// RecoveryReissue (with Recovery) re-sends requests that were in flight at the
	// crash to the new server; writes may then be applied twice.
	RecoveryReissue bool
	// NoAffinity skips pinning each queue thread to the CPUs blk-mq maps to it.
	NoAffinity bool

	// noLinkedReads commits ring reads after their CQEs instead of chaining
	// them to the COMMIT (the benchmark compares the two).
	noLinkedReads bool
}

func (o Options) withDefaults() Options {
	if o.Queues == 0 {
		o.Queues = min(runtime.GOMAXPROCS(0), DefaultMaxQueues)
	}
	if o.Depth == 0 {
		o.Depth = DefaultDepth
	}
	if o.MaxIOBytes == 0 {
		o.MaxIOBytes = DefaultMaxIOBytes
	}
	if o.BlockThreshold == 0 {
		o.BlockThreshold = DefaultBlockThreshold
	}
	if o.Workers == 0 {
		o.Workers = min(DefaultWorkers, o.Depth)
	}
	return o
}

// validate checks o after withDefaults.
func (o Options) validate() error {
	page := os.Getpagesize()
	switch {
	case o.Queues < 1 || o.Queues > maxQueues:
		return fmt.Errorf("ublk: Options.Queues = %d, want 1..%d", o.Queues, maxQueues)
	case o.Depth < 1 || o.Depth > maxDepth:
		return fmt.Errorf("ublk: Options.Depth = %d, want 1..%d", o.Depth, maxDepth)
	case o.MaxIOBytes < page || o.MaxIOBytes > 32<<20 || o.MaxIOBytes%page != 0:
		return fmt.Errorf("ublk: Options.MaxIOBytes = %d, want a multiple of %d in [%d, %d]", o.MaxIOBytes, page, page, 32<<20)
	case o.Workers < 0:
		return fmt.Errorf("ublk: Options.Workers = %d, want >= 0", o.Workers)
	case o.InThread && o.AlwaysWorkers:
		return fmt.Errorf("ublk: Options.InThread and Options.AlwaysWorkers are exclusive")
	case o.BlockThreshold < 0:
		return fmt.Errorf("ublk: Options.BlockThreshold = %v, want >= 0", o.BlockThreshold)
	case o.RecoveryReissue && !o.Recovery:
		return fmt.Errorf("ublk: Options.RecoveryReissue needs Options.Recovery")
	case o.SpecificID && o.ID >= 1<<20:
		return fmt.Errorf("ublk: Options.ID = %d, want < %d", o.ID, 1<<20)
	}
	return nil
}
