package zfile

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// streamSegmentBytes is the uncompressed size of one unit of WriteTo's work:
// one pread of its compressed blocks, decoded, one write, all by one worker. 256
// KiB keeps a segment's compressed and decoded bytes in the core's L2 cache from
// the read to the write.
const streamSegmentBytes = 256 << 10

// stream is the shared state of WriteTo's workers.
type stream struct {
	w       io.Writer
	perSeg  int64 // blocks per segment
	nseg    int64
	next    atomic.Int64 // next segment to claim
	stopped atomic.Bool  // an error happened: claim nothing more

	mu      sync.Mutex
	turn    sync.Cond // signalled when next to write changes
	towrite int64     // the segment whose turn it is to be written
	written int64
	err     error
}

// WriteTo writes the whole uncompressed content to w. GOMAXPROCS workers (the
// caller among them) each claim the next 256 KiB segment, read its compressed
// blocks, decode them and, when the segments before it are written, write it: one
// core's reading and decoding overlap another's writing, and a segment's bytes
// never leave the core that handles them (a pipeline of reader, decoder and writer
// goroutines moved every byte between cores, and woke a goroutine at each step).
// Bad blocks are retried as in ReadAt; the bytes before the first bad one are
// written, then its *BlockError is returned.
func (z *Reader) WriteTo(w io.Writer) (int64, error) {
	nblocks := int64(len(z.lens))
	if nblocks == 0 {
		return 0, nil
	}
	st := &stream{w: w, perSeg: max(1, streamSegmentBytes/z.bs)}
	st.nseg = (nblocks + st.perSeg - 1) / st.perSeg
	st.turn.L = &st.mu
	workers := int(min(int64(min(runtime.GOMAXPROCS(0), maxDecoders)), st.nseg))
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			z.streamSegments(st)
		}()
	}
	z.streamSegments(st)
	wg.Wait()
	err := st.err
	if err != nil {
		if be := (*BlockError)(nil); !errors.As(err, &be) {
			err = fmt.Errorf("zfile %s: write at %d: %w", z.name, st.written, err)
		}
	}
	return st.written, err
}

// streamSegments is one WriteTo worker: it handles segments until none is left or
// an error stops the stream. Its buffers serve all its segments.
func (z *Reader) streamSegments(st *stream) {
	var raw []byte
	out := make([]byte, st.perSeg*z.bs)
	for !st.stopped.Load() {
		k := st.next.Add(1) - 1
		if k >= st.nseg {
			return
		}
		first := k * st.perSeg
		end := min(first+st.perSeg, int64(len(z.lens)))
		off := z.blockOffset(first)
		clen := int64(0)
		for i := first; i < end; i++ {
			clen += int64(z.lens[i])
		}
		if int64(cap(raw)) < clen {
			// Sized for the usual case at once: compressed runs are rarely larger.
			raw = make([]byte, max(clen, int64(len(out))))
		}
		run := raw[:clen]
		if readFull(z.r, run, off) != nil {
			run = nil // each block is then read (and retried) on its own by decode
		}
		n, derr := z.decodeRun(first, end, off, run, out)

		st.mu.Lock()
		for st.towrite != k && !st.stopped.Load() {
			st.turn.Wait()
		}
		if st.stopped.Load() {
			st.mu.Unlock()
			return
		}
		st.mu.Unlock()
		// Only the segment whose turn it is writes: no lock needed around w.
		m, werr := st.w.Write(out[:n])
		st.mu.Lock()
		st.written += int64(m)
		if werr == nil {
			werr = derr
		}
		if werr != nil {
			st.err = werr
			st.stopped.Store(true)
		}
		st.towrite++
		st.turn.Broadcast()
		st.mu.Unlock()
	}
}

// decodeRun decodes blocks [first, end), whose compressed bytes (from file offset
// off) are raw, or still to be read if raw is nil, into out. It stops at the
// first bad block and returns the good bytes before it with its error.
func (z *Reader) decodeRun(first, end, off int64, raw, out []byte) (int, error) {
	n, pos := 0, int64(0)
	for i := first; i < end; i++ {
		l := int64(z.lens[i])
		var blk []byte
		if raw != nil {
			blk = raw[pos : pos+l]
		}
		blen := int(z.blockLen(i))
		if err := z.decode(i, blk, off+pos, out[n:n+blen]); err != nil {
			return n, err
		}
		n += blen
		pos += l
	}
	return n, nil
}
