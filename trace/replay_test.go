package trace

import (
	"context"
	"errors"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingLayer is a layer of size bytes that counts how often each byte is read
// (as a difference array: +1 at the start of a read, -1 past its end), the largest
// single read, and the most reads in flight at once.
type countingLayer struct {
	size  int64
	delay time.Duration
	fail  func(off int64) error // optional injected failure

	mu       sync.Mutex
	hits     []int32
	maxRead  int
	inFlight atomic.Int32
	maxIn    atomic.Int32
	reads    atomic.Int32
	onRead   func(n int32)
}

func newCountingLayer(size int64) *countingLayer {
	return &countingLayer{size: size, hits: make([]int32, size+1)}
}

func (c *countingLayer) ReadAt(p []byte, off int64) (int, error) {
	in := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		m := c.maxIn.Load()
		if in <= m || c.maxIn.CompareAndSwap(m, in) {
			break
		}
	}
	n := c.reads.Add(1)
	if c.onRead != nil {
		c.onRead(n)
	}
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	if c.fail != nil {
		if err := c.fail(off); err != nil {
			return 0, err
		}
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= c.size {
		return 0, io.EOF
	}
	k := int(min(int64(len(p)), c.size-off))
	c.mu.Lock()
	c.hits[off]++
	c.hits[off+int64(k)]--
	c.maxRead = max(c.maxRead, len(p))
	c.mu.Unlock()
	if k < len(p) {
		return k, io.EOF
	}
	return k, nil
}

// perByte turns a difference array into how often each byte was read.
func perByte(diff []int32) []int32 {
	out := make([]int32, len(diff)-1)
	var run int32
	for i := range out {
		run += diff[i]
		out[i] = run
	}
	return out
}

func TestReplayReadsEveryByteExactly(t *testing.T) {
	sizes := []int64{16 << 10, 3<<20 + 4096, 2<<20 + 4096}
	layers := []*countingLayer{newCountingLayer(sizes[0]), newCountingLayer(sizes[1]), newCountingLayer(sizes[2])}
	recs := []Record{
		{OpRead, 0, 4096, 0},
		{OpRead, 1, 3*MaxIOSize + 777, 1000},    // split into 4 reads
		{OpRead, 2, 512, sizes[2] - 512},        // the very end
		{OpRead, 0, 8192, 2048},                 // overlaps the first: read twice
		{OpRead, 2, MaxIOSize, MaxIOSize + 512}, // exactly one read
		{OpRead, 1, 0, 12345},                   // empty: nothing to read
		{OpRead, 0, 4096, 0},                    // a duplicate is replayed again
	}
	want := make([][]int32, len(layers))
	for i := range want {
		want[i] = make([]int32, sizes[i]+1)
	}
	var wantBytes int64
	for _, r := range recs {
		want[r.Layer][r.Offset]++
		want[r.Layer][r.Offset+int64(r.Count)]--
		wantBytes += int64(r.Count)
	}
	st, err := Replay(context.Background(), recs, []io.ReaderAt{layers[0], layers[1], layers[2]}, 4)
	if err != nil {
		t.Fatal(err)
	}
	for li, l := range layers {
		got, exp := perByte(l.hits), perByte(want[li])
		for b := range exp {
			if got[b] != exp[b] {
				t.Fatalf("layer %d byte %d read %d times, want %d", li, b, got[b], exp[b])
			}
		}
		if l.maxRead > MaxIOSize {
			t.Errorf("layer %d saw a %d-byte read, above %d", li, l.maxRead, MaxIOSize)
		}
	}
	if st.Records != len(recs) || st.Skipped != 0 || st.Errors != 0 || st.FirstError != nil ||
		st.Bytes != wantBytes || st.Reads != 1+4+1+1+1+0+1 || st.Duration <= 0 {
		t.Fatalf("stats %+v (want bytes %d)", st, wantBytes)
	}
}

func TestReplaySkipsAndCountsErrors(t *testing.T) {
	good := newCountingLayer(1 << 20)
	boom := errors.New("boom")
	bad := newCountingLayer(1 << 20)
	bad.fail = func(off int64) error {
		if off == 4096 {
			return boom
		}
		return nil
	}
	layers := []io.ReaderAt{good, nil, bad}
	recs := []Record{
		{OpRead, 0, 512, 0},              // ok
		{OpRead, 1, 512, 0},              // nil layer: skipped
		{OpRead, 7, 512, 0},              // no such layer: skipped
		{OpRead, math.MaxUint32, 512, 0}, // no such layer: skipped
		{OpWrite, 0, 512, 0},             // writes are not replayed
		{Op(0), 0, 512, 0},               // unknown op: skipped
		{OpRead, 2, 512, 4096},           // read error
		{OpRead, 0, 1024, 1<<20 - 512},   // short read at the end of the layer
		{OpRead, 0, 512, -512},           // invalid offset
		{OpRead, 0, math.MaxUint64, 1},   // range overflows
		{OpRead, 2, 512, 0},              // ok after the failure
	}
	st, err := Replay(context.Background(), recs, layers, 2)
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 5 || st.Errors != 4 || st.Records != 4 || st.Bytes != 1024 || st.Reads != 4 {
		t.Fatalf("stats %+v", st)
	}
	if st.FirstError == nil {
		t.Fatal("no FirstError")
	}
	if perByte(good.hits)[0] != 1 || perByte(bad.hits)[0] != 1 || perByte(bad.hits)[4096] != 0 {
		t.Fatal("wrong bytes read")
	}
}

func TestReplayRespectsConcurrency(t *testing.T) {
	for _, n := range []int{1, 3, 0} {
		l := newCountingLayer(1 << 20)
		l.delay = 2 * time.Millisecond
		recs := make([]Record, 60)
		for i := range recs {
			recs[i] = Record{OpRead, 0, 512, int64(i) * 512}
		}
		st, err := Replay(context.Background(), recs, []io.ReaderAt{l}, n)
		if err != nil || st.Reads != 60 {
			t.Fatalf("n=%d: %+v, %v", n, st, err)
		}
		limit := n
		if n == 0 {
			limit = DefaultConcurrency
		}
		if got := int(l.maxIn.Load()); got > limit {
			t.Fatalf("n=%d: %d reads in flight, limit %d", n, got, limit)
		}
		if n == 3 && l.maxIn.Load() < 2 {
			t.Errorf("n=3: reads never overlapped (max in flight %d)", l.maxIn.Load())
		}
	}
}

func TestReplayCancel(t *testing.T) {
	l := newCountingLayer(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	l.onRead = func(n int32) {
		if n == 5 {
			cancel()
		}
	}
	recs := make([]Record, 10000)
	for i := range recs {
		recs[i] = Record{OpRead, 0, 512, int64(i%2048) * 512}
	}
	const workers = 4
	st, err := Replay(ctx, recs, []io.ReaderAt{l}, workers)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	// Reads already handed to a worker may finish; nothing new starts.
	if got := l.reads.Load(); got > 5+workers {
		t.Fatalf("%d reads after cancelling at the 5th", got)
	}
	if st.Reads != int(l.reads.Load()) || st.Records >= len(recs) {
		t.Fatalf("stats %+v", st)
	}

	// Already cancelled: no read at all.
	l2 := newCountingLayer(4096)
	st, err = Replay(ctx, recs, []io.ReaderAt{l2}, workers)
	if !errors.Is(err, context.Canceled) || l2.reads.Load() != 0 || st.Reads != 0 {
		t.Fatalf("pre-cancelled: %+v, %v, %d reads", st, err, l2.reads.Load())
	}
}

// sizedLayer is a countingLayer that tells its size, as the image's layers do.
type sizedLayer struct{ *countingLayer }

func (s sizedLayer) Size() int64 { return s.size }

// A hostile or corrupt trace costs at most one pass over each layer: a record
// with a huge count is clamped to the layer (known size, or the first end of file
// a read meets), and records beyond the layer's size in all are skipped.
func TestReplayHostileTraceBounded(t *testing.T) {
	const size = 1 << 20
	huge := []Record{{Op: OpRead, Layer: 0, Offset: 0, Count: 1 << 60}}
	many := make([]Record, 1000) // each the whole layer: 1000 passes asked
	for i := range many {
		many[i] = Record{Op: OpRead, Layer: 0, Offset: 0, Count: size}
	}
	past := []Record{{Op: OpRead, Layer: 0, Offset: 1 << 50, Count: 1 << 40}}
	for _, tc := range []struct {
		name  string
		recs  []Record
		sized bool
	}{
		{"huge-count-sized", huge, true}, {"huge-count-unsized", huge, false},
		{"many-passes-sized", many, true}, {"past-end-sized", past, true}, {"past-end-unsized", past, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newCountingLayer(size)
			var src io.ReaderAt = l
			if tc.sized {
				src = sizedLayer{l}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st, err := Replay(ctx, tc.recs, []io.ReaderAt{src}, 4)
			if err != nil {
				t.Fatalf("replay did not finish: %v (%+v)", err, st)
			}
			// Unsized, the workers may have a few reads in flight when the first
			// end of file is met.
			limit := int32(size/MaxIOSize + 1)
			if !tc.sized {
				limit += 4 + 1
			}
			if got := l.reads.Load(); got > limit {
				t.Errorf("%d reads of a %d-byte layer (limit %d): %+v", got, size, limit, st)
			}
			if tc.sized && st.Errors != 0 {
				t.Errorf("clamped reads failed: %+v", st)
			}
			if tc.name != "past-end-unsized" && tc.name != "past-end-sized" && st.Bytes != size {
				t.Errorf("%d bytes read, want the layer's %d once", st.Bytes, size)
			}
			t.Logf("%+v, %d reads", st, l.reads.Load())
		})
	}
}
