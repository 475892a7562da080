package zfile

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// streamSegmentBytes is the uncompressed size of one unit of WriteTo's pipeline:
// one pread of its compressed blocks, decoded by one worker, one write. 256 KiB
// keeps a segment's compressed and decoded bytes in a core's L2 cache from the
// read to the write, and the buffers in flight few (each page of them is faulted
// in once): about 10% less CPU time than 1 MiB segments, no more wall time.
const streamSegmentBytes = 256 << 10

// segment is a run of consecutive blocks in WriteTo's pipeline.
type segment struct {
	first, end int64 // blocks [first, end)
	off        int64 // file offset of block first
	bufs       *segmentBuffers
	raw        []byte // compressed bytes of the run; nil if the read failed
	n          int    // good bytes in bufs.out
	err        error  // first block error; bufs.out[:n] precedes the bad block
	ready      chan struct{}
}

// segmentBuffers are one segment's buffers. WriteTo allocates at most
// pipelineDepth of them and hands each back to the reader once its segment is
// written: a sync.Pool, emptied by every GC, made it allocate (and the kernel
// fault in and zero) fresh megabytes all along, about a sixth of its CPU time.
type segmentBuffers struct {
	raw, out []byte
}

// WriteTo writes the whole uncompressed content to w. Reading, decoding and
// writing overlap: one goroutine reads the compressed bytes of 1 MiB runs of
// blocks ahead, GOMAXPROCS workers decode runs, and the caller writes them in
// order, so neither the reads nor the writes leave the cores idle. Bad blocks are
// retried as in ReadAt; the bytes before the first bad one are written, then its
// *BlockError is returned.
func (z *Reader) WriteTo(w io.Writer) (int64, error) {
	nblocks := int64(len(z.lens))
	if nblocks == 0 {
		return 0, nil
	}
	workers := min(runtime.GOMAXPROCS(0), maxDecoders)
	perSeg := max(1, streamSegmentBytes/z.bs)
	// Segments in flight: one being read, one per worker, one being written.
	depth := workers + 2
	free := make(chan *segmentBuffers, depth)
	allocated := 0

	work := make(chan *segment, workers)
	order := make(chan *segment, depth)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				z.decodeSegment(s)
				close(s.ready)
			}
		}()
	}
	go func() {
		defer close(order)
		defer close(work)
		for b := int64(0); b < nblocks; {
			var bufs *segmentBuffers
			select {
			case bufs = <-free:
			case <-stop:
				return
			default:
				if allocated < depth {
					allocated++
					bufs = &segmentBuffers{out: make([]byte, perSeg*z.bs)}
				} else {
					select {
					case bufs = <-free:
					case <-stop:
						return
					}
				}
			}
			s := &segment{first: b, end: min(b+perSeg, nblocks), off: z.blockOffset(b), bufs: bufs, ready: make(chan struct{})}
			clen := int64(0)
			for i := s.first; i < s.end; i++ {
				clen += int64(z.lens[i])
			}
			if int64(cap(bufs.raw)) < clen {
				// Sized for the usual case at once: compressed runs are rarely larger.
				bufs.raw = make([]byte, max(clen, perSeg*z.bs))
			}
			s.raw = bufs.raw[:clen]
			if readFull(z.r, s.raw, s.off) != nil {
				s.raw = nil // each block is then read (and retried) on its own by decode
			}
			select {
			case order <- s:
			case <-stop:
				return
			}
			work <- s // workers drain work until it is closed: never blocks for good
			b = s.end
		}
	}()

	var written int64
	var err error
	for s := range order {
		<-s.ready
		if err == nil {
			var k int
			k, err = w.Write(s.bufs.out[:s.n])
			written += int64(k)
			if err == nil && s.err != nil {
				err = s.err
			}
			if err != nil {
				close(stop) // the producer stops; the segments in flight drain below
			}
		}
		free <- s.bufs // never blocks: at most depth buffers exist
	}
	wg.Wait()
	if err != nil {
		if be := (*BlockError)(nil); !errors.As(err, &be) {
			err = fmt.Errorf("zfile %s: write at %d: %w", z.name, written, err)
		}
	}
	return written, err
}

// decodeSegment decodes the blocks of s into s.out, stopping at the first bad one.
func (z *Reader) decodeSegment(s *segment) {
	raw, out := s.raw, s.bufs.out
	pos := int64(0)
	for i := s.first; i < s.end; i++ {
		l := int64(z.lens[i])
		var blk []byte
		if raw != nil {
			blk = raw[pos : pos+l]
		}
		blen := int(z.blockLen(i))
		if err := z.decode(i, blk, s.off+pos, out[s.n:s.n+blen]); err != nil {
			s.err = err
			return
		}
		s.n += blen
		pos += l
	}
}
