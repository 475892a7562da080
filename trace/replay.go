package trace

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultConcurrency is the reference's default prefetchConfig.concurrency.
const DefaultConcurrency = 16

// Stats describes a replay.
type Stats struct {
	Records    int           // read records replayed (layer present)
	Skipped    int           // records skipped: not a read, no such layer, past the layer's end or over its budget
	Reads      int           // reads issued (records split at MaxIOSize)
	Bytes      int64         // bytes read successfully
	Errors     int           // reads that failed or came back short, plus invalid ranges
	FirstError error         // the first of those errors, for the log
	Duration   time.Duration // wall time of the replay
}

type replayJob struct {
	src io.ReaderAt
	off int64
	n   int
}

// Replay reads every read record's range from layers[rec.Layer] with concurrency
// workers (DefaultConcurrency if <= 0), in record order, at most MaxIOSize per read,
// so that the layers' caches fill. Read errors are counted, never fatal; records
// naming a missing (out of range or nil) layer, and write records, are skipped as in
// the reference. Each record is clamped to its layer's size (Size() or Stat(), else
// the first end of file a read meets), and a layer is read for at most its size in
// all: a hostile or corrupt trace costs at most one pass over each layer. Cancelling
// ctx stops new reads (reads in flight finish) and returns ctx.Err() with the stats
// so far.
func Replay(ctx context.Context, recs []Record, layers []io.ReaderAt, concurrency int) (Stats, error) {
	if concurrency <= 0 {
		concurrency = DefaultConcurrency
	}
	start := time.Now()
	var st Stats
	var (
		reads, errs atomic.Int64
		nbytes      atomic.Int64
		errOnce     sync.Once
		firstErr    error
	)
	fail := func(err error) {
		errs.Add(1)
		errOnce.Do(func() { firstErr = err })
	}

	// ends[i]: layer i's size, or the lowest end of file a read met (MaxInt64:
	// unknown yet); budget[i]: bytes layer i may still be read for.
	ends := make([]atomic.Int64, len(layers))
	budget := make([]int64, len(layers))
	for i, l := range layers {
		size := layerSize(l)
		if size < 0 {
			size = math.MaxInt64
		}
		ends[i].Store(size)
		budget[i] = size
	}
	type layerJob struct {
		replayJob
		layer int
	}
	jobs := make(chan layerJob)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte // grown on demand: small traces need no 1 MiB buffers
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				if cap(buf) < j.n {
					buf = make([]byte, j.n)
				}
				reads.Add(1)
				n, err := j.src.ReadAt(buf[:j.n], j.off)
				if n == j.n {
					nbytes.Add(int64(n))
					continue
				}
				if err == io.EOF {
					lowerTo(&ends[j.layer], j.off+int64(n))
				}
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				fail(fmt.Errorf("trace: replay read of %d bytes at offset %d: got %d: %w", j.n, j.off, n, err))
			}
		}()
	}

	err := func() error {
		for i, r := range recs {
			if err := ctx.Err(); err != nil {
				return err
			}
			if r.Op != OpRead || uint64(r.Layer) >= uint64(len(layers)) || layers[r.Layer] == nil {
				st.Skipped++
				continue
			}
			if r.Offset < 0 || r.Count > math.MaxInt64-uint64(r.Offset) {
				fail(fmt.Errorf("trace: replay record %d: invalid range offset %d count %d", i, r.Offset, r.Count))
				continue
			}
			li := int(r.Layer)
			if r.Offset >= ends[li].Load() || budget[li] <= 0 {
				st.Skipped++
				continue
			}
			st.Records++
			src := layers[li]
			for off, end := r.Offset, r.Offset+int64(r.Count); off < min(end, ends[li].Load()) && budget[li] > 0; {
				n := int(min(end-off, ends[li].Load()-off, budget[li], MaxIOSize))
				select {
				case jobs <- layerJob{replayJob{src: src, off: off, n: n}, li}:
				case <-ctx.Done():
					return ctx.Err()
				}
				off += int64(n)
				budget[li] -= int64(n)
			}
		}
		return nil
	}()
	close(jobs)
	wg.Wait()

	st.Reads = int(reads.Load())
	st.Bytes = nbytes.Load()
	st.Errors = int(errs.Load())
	st.FirstError = firstErr
	st.Duration = time.Since(start)
	return st, err
}

// layerSize is r's size when r can tell it (Size() or Stat()), else -1.
func layerSize(r io.ReaderAt) int64 {
	switch l := r.(type) {
	case interface{ Size() int64 }:
		return l.Size()
	case interface{ Stat() (os.FileInfo, error) }:
		if fi, err := l.Stat(); err == nil {
			return fi.Size()
		}
	}
	return -1
}

// lowerTo lowers v to x if x is lower.
func lowerTo(v *atomic.Int64, x int64) {
	for {
		cur := v.Load()
		if x >= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}
