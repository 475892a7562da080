package zfile

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// streamSegmentBytes is the uncompressed size of one unit of WriteTo's pipeline:
// one pread of its compressed blocks, decoded by one worker, one write.
const streamSegmentBytes = 1 << 20

// segment is a run of consecutive blocks in WriteTo's pipeline.
type segment struct {
	first, end int64   // blocks [first, end)
	off        int64   // file offset of block first
	raw        *[]byte // compressed bytes of the run; nil if the read failed
	out        *[]byte // decoded bytes
	n          int     // good bytes in out
	err        error   // first block error; out[:n] precedes the bad block
	ready      chan struct{}
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
	var rawBufs, outBufs sync.Pool
	rawBufs.New = func() any { b := make([]byte, 0, perSeg*(z.bs+512+crcSize)); return &b }
	outBufs.New = func() any { b := make([]byte, perSeg*z.bs); return &b }

	work := make(chan *segment, workers)
	order := make(chan *segment, 2*workers)
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
			select {
			case <-stop:
				return
			default:
			}
			s := &segment{first: b, end: min(b+perSeg, nblocks), off: z.blockOffset(b), ready: make(chan struct{})}
			clen := int64(0)
			for i := s.first; i < s.end; i++ {
				clen += int64(z.lens[i])
			}
			s.raw = rawBufs.Get().(*[]byte)
			*s.raw = (*s.raw)[:clen]
			if readFull(z.r, *s.raw, s.off) != nil {
				// Each block is then read (and retried) on its own by decode.
				rawBufs.Put(s.raw)
				s.raw = nil
			}
			s.out = outBufs.Get().(*[]byte)
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
			k, err = w.Write((*s.out)[:s.n])
			written += int64(k)
			if err == nil && s.err != nil {
				err = s.err
			}
			if err != nil {
				close(stop) // the producer stops; the segments in flight drain below
			}
		}
		if s.raw != nil {
			rawBufs.Put(s.raw)
		}
		outBufs.Put(s.out)
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
	var raw []byte
	if s.raw != nil {
		raw = *s.raw
	}
	out := *s.out
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
