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
// one pread of its compressed blocks and their decoding by one worker, one write.
// 256 KiB keeps a segment's bytes in the core's L2 cache while it decodes them,
// and costs less CPU than 1 MiB (fewer pages to fault in, fewer cache misses).
const streamSegmentBytes = 256 << 10

// streamAhead is how many segments per worker WriteTo may have decoded or in
// hand beyond the next one to write. A worker descheduled by the kernel in the
// middle of the next segment (other load on the machine) then stalls the others
// only once they have decoded that far ahead, not at once.
const streamAhead = 4

// stream is the shared state of WriteTo's workers.
type stream struct {
	w      io.Writer
	perSeg int64 // blocks per segment
	nseg   int64

	mu      sync.Mutex
	cond    sync.Cond // a segment was written, or the stream stopped
	next    int64     // next segment to claim
	towrite int64     // next segment to write
	writing bool      // a worker is writing segments (only one does at a time)
	slots   []streamSlot
	spare   []*[]byte
	written int64
	err     error // first error: the stream stops
}

// streamSlot holds decoded segment k in slots[k % len(slots)] until it is written.
type streamSlot struct {
	out   *[]byte // decoded bytes, a spare buffer again once written
	n     int     // good bytes in out
	err   error   // first block error: out[:n] precedes the bad block
	ready bool
}

// WriteTo writes the whole uncompressed content to w. GOMAXPROCS workers (the
// caller among them) each claim the next 256 KiB segment, read its compressed
// blocks and decode them; whichever worker finishes the next segment to write
// writes it, and any that follow it ready. Reading, decoding and writing overlap
// on every core, a segment's bytes stay on the core that decoded them, and no
// worker waits for another unless it has decoded streamAhead segments ahead.
// Bad blocks are retried as in ReadAt; the bytes before the first bad one are
// written, then its *BlockError is returned.
func (z *Reader) WriteTo(w io.Writer) (int64, error) {
	nblocks := int64(len(z.lens))
	if nblocks == 0 {
		return 0, nil
	}
	st := &stream{w: w, perSeg: max(1, streamSegmentBytes/z.bs)}
	st.nseg = (nblocks + st.perSeg - 1) / st.perSeg
	st.cond.L = &st.mu
	workers := int(min(int64(min(runtime.GOMAXPROCS(0), maxDecoders)), st.nseg))
	st.slots = make([]streamSlot, streamAhead*workers)
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

// WriteToAt writes the whole uncompressed content to w at offsets [0, Size()):
// WriteTo for a destination that takes positional writes (a regular file).
// GOMAXPROCS workers each claim the next 256 KiB segment, read its compressed
// blocks, decode them and write them at their offset themselves: no worker waits
// for another (nor hands its bytes to another core to be written in order), and
// each reuses one output buffer. It returns the length of the prefix of the
// content that was written (all of it, or the bytes before the first failure by
// offset) and that failure: a bad block's *BlockError (retried as in ReadAt;
// the good bytes before it are written), or a write error naming its offset.
// After a failure, bytes beyond it may have been written as well.
func (z *Reader) WriteToAt(w io.WriterAt) (int64, error) {
	nblocks := int64(len(z.lens))
	if nblocks == 0 {
		return 0, nil
	}
	perSeg := max(1, streamSegmentBytes/z.bs)
	nseg := (nblocks + perSeg - 1) / perSeg
	workers := int(min(int64(min(runtime.GOMAXPROCS(0), maxDecoders)), nseg))
	var (
		next    atomic.Int64 // next segment to claim
		stopped atomic.Bool
		mu      sync.Mutex
		failAt  = z.size // offset of the first failure, by offset
		failErr error
	)
	fail := func(at int64, err error) {
		stopped.Store(true)
		mu.Lock()
		defer mu.Unlock()
		if failErr == nil || at < failAt {
			failAt, failErr = at, err
		}
	}
	// Segments are claimed in order and every claimed one is finished, so all
	// segments before the first failure are written when the workers return.
	work := func() {
		var raw []byte
		out := make([]byte, perSeg*z.bs)
		for !stopped.Load() {
			k := next.Add(1) - 1
			if k >= nseg {
				return
			}
			first := k * perSeg
			var n int
			var derr error
			raw, n, derr = z.decodeSegment(first, min(first+perSeg, nblocks), raw, out)
			off := first * z.bs
			if m, err := w.WriteAt(out[:n], off); err != nil {
				fail(off+int64(m), fmt.Errorf("zfile %s: write at %d: %w", z.name, off+int64(m), err))
				return
			}
			if derr != nil {
				fail(off+int64(n), derr)
				return
			}
		}
	}
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
	return failAt, failErr
}

// streamSegments is one WriteTo worker: it handles segments until none is left or
// an error stops the stream. Its buffer for compressed bytes serves all its
// segments; decoded ones wait in the slots to be written.
func (z *Reader) streamSegments(st *stream) {
	ring := int64(len(st.slots))
	var raw []byte
	st.mu.Lock()
	defer st.mu.Unlock()
	for {
		for st.err == nil && st.next < st.nseg && st.next >= st.towrite+ring {
			st.cond.Wait()
		}
		if st.err != nil || st.next >= st.nseg {
			return
		}
		k := st.next
		st.next++
		var out *[]byte
		if n := len(st.spare); n > 0 {
			out, st.spare = st.spare[n-1], st.spare[:n-1]
		} else {
			b := make([]byte, st.perSeg*z.bs)
			out = &b
		}
		st.mu.Unlock()
		var n int
		var derr error
		raw, n, derr = z.decodeSegment(k*st.perSeg, min((k+1)*st.perSeg, int64(len(z.lens))), raw, *out)
		st.mu.Lock()
		st.slots[k%ring] = streamSlot{out: out, n: n, err: derr, ready: true}
		if !st.writing {
			st.writing = true
			st.writeReady()
			st.writing = false
		}
	}
}

// writeReady writes the ready segments from towrite on, in order. It is called
// with st.mu held and returns with it held; the lock is released during writes.
func (st *stream) writeReady() {
	ring := int64(len(st.slots))
	for st.err == nil {
		s := &st.slots[st.towrite%ring]
		if !s.ready {
			return
		}
		st.mu.Unlock()
		m, err := st.w.Write((*s.out)[:s.n])
		st.mu.Lock()
		st.written += int64(m)
		if err == nil {
			err = s.err
		}
		st.err = err
		st.spare = append(st.spare, s.out)
		*s = streamSlot{}
		st.towrite++
		st.cond.Broadcast()
	}
}

// decodeSegment reads the compressed bytes of blocks [first, end) at once into
// raw (grown if needed, and returned) and decodes them into out, stopping at the
// first bad block: it returns the good bytes before it with its error.
func (z *Reader) decodeSegment(first, end int64, raw, out []byte) ([]byte, int, error) {
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
	n, err := z.decodeRun(first, end, off, run, out)
	return raw, n, err
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
