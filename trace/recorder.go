package trace

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sync"

	"github.com/obd-project/obd/internal/atomicfile"
)

// DefaultMaxRecords bounds a Recorder's memory (24 bytes a record: 24 MiB).
const DefaultMaxRecords = 1 << 20

// Recorder collects the reads made through its layer wrappers. It is safe for
// concurrent use. Memory is bounded: when MaxRecords records are held it compacts
// them (Compact); if that frees less than a quarter of the room, later reads are
// counted in Dropped instead of recorded — a trace is a prefetch hint, so losing the
// tail of a very long start-up only costs cache warmth.
type Recorder struct {
	max int

	mu      sync.Mutex
	recs    []Record
	stopped bool
	full    bool
	dropped uint64
}

// NewRecorder returns a recorder holding at most maxRecords records
// (DefaultMaxRecords if maxRecords <= 0).
func NewRecorder(maxRecords int) *Recorder {
	if maxRecords <= 0 {
		maxRecords = DefaultMaxRecords
	}
	return &Recorder{max: maxRecords}
}

// Layer wraps lower layer i (0 = bottom) so that every successful, complete ReadAt is
// recorded as {OpRead, i, len(p), off}; like the reference, short or failed reads are
// not recorded. i must fit a uint32 (a negative index is a programming error and
// panics).
func (r *Recorder) Layer(i int, src io.ReaderAt) io.ReaderAt {
	if i < 0 || uint64(i) > math.MaxUint32 {
		panic(fmt.Sprintf("trace: layer index %d out of range", i))
	}
	return &recordingLayer{rec: r, layer: uint32(i), src: src}
}

type recordingLayer struct {
	rec   *Recorder
	layer uint32
	src   io.ReaderAt
}

func (l *recordingLayer) ReadAt(p []byte, off int64) (int, error) {
	n, err := l.src.ReadAt(p, off)
	if n == len(p) && n > 0 {
		l.rec.add(l.layer, uint64(n), off)
	}
	return n, err
}

func (r *Recorder) add(layer uint32, count uint64, off int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	// Split as we go so that compaction never has to grow the slice.
	for count > 0 {
		c := min(count, MaxIOSize)
		if !r.room() {
			r.dropped++
			return
		}
		r.recs = append(r.recs, Record{Op: OpRead, Layer: layer, Count: c, Offset: off})
		count -= c
		off += int64(c)
	}
}

// room reports whether one more record fits, compacting once the limit is reached.
func (r *Recorder) room() bool {
	if r.full {
		return false
	}
	if len(r.recs) < r.max {
		return true
	}
	r.recs = Compact(r.recs)
	if len(r.recs) > r.max-r.max/4 {
		r.full = true
		return false
	}
	return true
}

// Stop ends recording: later reads through the wrappers are not recorded.
func (r *Recorder) Stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

// Dropped is the number of records lost because the recorder was full.
func (r *Recorder) Dropped() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped
}

// Len is the number of records currently held (before the final compaction).
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.recs)
}

// Records returns the compacted records in recording order.
func (r *Recorder) Records() []Record {
	r.mu.Lock()
	recs := slices.Clone(r.recs)
	r.mu.Unlock()
	return Compact(recs)
}

// Dump writes the compacted records as a binary trace to path, atomically: a
// temporary file in the same directory is written, synced and renamed over path, so a
// reader never sees a half-written trace. An existing file's permissions are kept.
func (r *Recorder) Dump(path string) error {
	return writeTraceFile(path, r.Records())
}

func writeTraceFile(path string, recs []Record) (err error) {
	perm := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		perm = st.Mode().Perm()
	}
	err = atomicfile.Write(path, perm, func(w io.Writer) error { return WriteTrace(w, recs) })
	if err != nil {
		return fmt.Errorf("trace: dump %s: %w", path, err)
	}
	return nil
}

// Compact shrinks a record list without changing the set of bytes it covers:
//   - records of zero length are dropped;
//   - a record identical to an earlier one (same op, layer, offset, count) is dropped;
//   - a record that starts where the last kept record of the same layer and op ends
//     is merged into it, as long as the result stays within MaxIOSize;
//   - records longer than MaxIOSize are split, so the reference daemon's 1 MiB replay
//     buffer is never overrun.
//
// Order is kept (first occurrence), except that a merged record's bytes move to the
// position of the record they were merged into. The reference replays records with
// several workers in roughly queue order, and a repeated range only costs it a second
// read of cached data, so a compacted trace warms the same bytes; the output is an
// ordinary trace that the reference reads unchanged.
func Compact(recs []Record) []Record {
	n := len(recs)
	if n == 0 {
		return nil
	}
	dup := findDuplicates(recs)

	type stream struct {
		layer uint32
		op    Op
	}
	last := make(map[stream]int)
	out := make([]Record, 0, n)
	for i, r := range recs {
		if (dup != nil && dup[i]) || r.Count == 0 {
			continue
		}
		s := stream{r.Layer, r.Op}
		if li, ok := last[s]; ok {
			p := &out[li]
			if p.Offset >= 0 && r.Offset >= 0 && p.Count <= math.MaxInt64-uint64(p.Offset) &&
				p.Offset+int64(p.Count) == r.Offset && p.Count+r.Count <= MaxIOSize {
				p.Count += r.Count
				continue
			}
		}
		for r.Count > MaxIOSize && r.Offset >= 0 && r.Offset <= math.MaxInt64-MaxIOSize {
			out = append(out, Record{Op: r.Op, Layer: r.Layer, Count: MaxIOSize, Offset: r.Offset})
			r.Count -= MaxIOSize
			r.Offset += MaxIOSize
		}
		out = append(out, r)
		last[s] = len(out) - 1
	}
	return out
}

// findDuplicates marks every record equal to an earlier one. It sorts indices
// (4 bytes each) rather than hashing the 24-byte records: at a million records that
// is the difference between 4 MiB and ~50 MiB of transient memory. Beyond int32
// indices (48 GiB of records, never held by a Recorder) it finds none.
func findDuplicates(recs []Record) []bool {
	n := len(recs)
	if n > math.MaxInt32 {
		return nil
	}
	idx := make([]int32, n)
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int {
		ra, rb := &recs[a], &recs[b]
		return cmp.Or(
			cmp.Compare(ra.Layer, rb.Layer),
			cmp.Compare(ra.Offset, rb.Offset),
			cmp.Compare(ra.Count, rb.Count),
			cmp.Compare(ra.Op, rb.Op),
			cmp.Compare(a, b),
		)
	})
	dup := make([]bool, n)
	for k := 1; k < n; k++ {
		if recs[idx[k]] == recs[idx[k-1]] {
			dup[idx[k]] = true
		}
	}
	return dup
}
