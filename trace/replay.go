package trace

import (
	"context"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultConcurrency is the reference's default prefetchConfig.concurrency.
const DefaultConcurrency = 16

// Stats describes a replay.
type Stats struct {
	Records    int           // read records replayed (layer present)
	Skipped    int           // records skipped: not a read, or no such layer
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
// the reference. Cancelling ctx stops new reads (reads in flight finish) and returns
// ctx.Err() with the stats so far.
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

	jobs := make(chan replayJob)
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
			st.Records++
			src := layers[r.Layer]
			for off, end := r.Offset, r.Offset+int64(r.Count); off < end; {
				n := int(min(end-off, MaxIOSize))
				select {
				case jobs <- replayJob{src: src, off: off, n: n}:
				case <-ctx.Done():
					return ctx.Err()
				}
				off += int64(n)
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
