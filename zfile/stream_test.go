package zfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// WriteTo yields exactly the content for every layout: a short last block,
// several pipeline segments, large blocks, zstd, and a file with no blocks.
// streamLayout is a ZFile to decode whole: its content size and options.
type streamLayout struct {
	size int
	o    Options
}

// streamLayouts: a short last block, several pipeline segments, large blocks,
// zstd, no CRC, and a file with no blocks.
var streamLayouts = []streamLayout{
	{0, Options{}},
	{1, Options{}},
	{4096, Options{}},
	{3*streamSegmentBytes + 12345, Options{}},
	{5*streamSegmentBytes/2 + 1, Options{BlockSize: 64 << 10, Algorithm: Zstd}},
	{streamSegmentBytes + 4096, Options{BlockSize: 16 << 10, NoCRC: true}},
}

func TestWriteToRoundTrip(t *testing.T) {
	for _, tc := range streamLayouts {
		src := append(testData(int64(tc.size), tc.size/2, true), testData(7, tc.size-tc.size/2, false)...)
		zb := compressBytes(t, src, tc.o)
		z := openBytes(t, zb)
		var out bytes.Buffer
		n, err := z.WriteTo(&out)
		if err != nil || n != int64(len(src)) || !bytes.Equal(out.Bytes(), src) {
			t.Fatalf("size %d %+v: WriteTo = %d, %v; content equal: %v", tc.size, tc.o, n, err, bytes.Equal(out.Bytes(), src))
		}
		// Decompress goes through WriteTo as well.
		out.Reset()
		if n, err := Decompress(&out, bytes.NewReader(zb), int64(len(zb))); err != nil || n != int64(len(src)) || !bytes.Equal(out.Bytes(), src) {
			t.Fatalf("size %d: Decompress = %d, %v", tc.size, n, err)
		}
	}
}

// A bad block: WriteTo writes exactly the good bytes before it and returns its
// BlockError; a block that heals on a re-read is retried as in ReadAt.
func TestWriteToBadBlock(t *testing.T) {
	src := testData(21, 3*streamSegmentBytes, true)
	zb := compressBytes(t, src, Options{})
	z0 := openBytes(t, zb)
	blk := int64(streamSegmentBytes/4096 + 77) // in the second segment
	off := z0.blockOffset(blk)
	for _, healAfter := range []int{1, 1 << 30} {
		fs := &flakySource{b: zb, bad: [2]int64{off + 2, off + 3}, healAfter: healAfter}
		z, err := Open(fs, int64(len(zb)), WithBlockCache(0))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		n, err := z.WriteTo(&out)
		if healAfter == 1 {
			if err != nil || !bytes.Equal(out.Bytes(), src) {
				t.Fatalf("healing block: n %d, %v", n, err)
			}
			continue
		}
		var berr *BlockError
		if !errors.As(err, &berr) || berr.Block != blk || !errors.Is(err, ErrChecksum) || berr.Tries != maxTries {
			t.Fatalf("bad block: %v", err)
		}
		if n != blk*4096 || int64(out.Len()) != n || !bytes.Equal(out.Bytes(), src[:n]) {
			t.Fatalf("bad block: wrote %d bytes (buffer %d), want the %d good ones", n, out.Len(), blk*4096)
		}
	}
}

// unreadable fails every read of the compressed range [from, to).
type unreadable struct {
	b        []byte
	from, to int64
}

func (u unreadable) ReadAt(p []byte, off int64) (int, error) {
	if off < u.to && off+int64(len(p)) > u.from {
		return 0, errors.New("medium error")
	}
	return bytes.NewReader(u.b).ReadAt(p, off)
}

// A failed read of a whole segment falls back to block reads, so only the block
// that really cannot be read fails, and with its own I/O error.
func TestWriteToReadError(t *testing.T) {
	src := testData(22, 2*streamSegmentBytes, true)
	zb := compressBytes(t, src, Options{})
	z0 := openBytes(t, zb)
	blk := int64(streamSegmentBytes/4096 + 44) // in the second segment
	off := z0.blockOffset(blk)
	z, err := Open(unreadable{zb, off, off + 1}, int64(len(zb)))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	n, err := z.WriteTo(&out)
	var berr *BlockError
	if !errors.As(err, &berr) || berr.Block != blk || !strings.Contains(err.Error(), "medium error") {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != blk*4096 || !bytes.Equal(out.Bytes(), src[:n]) {
		t.Fatalf("wrote %d bytes, want %d good ones", n, blk*4096)
	}
}

// A failing destination stops the pipeline: the error names the offset and no
// goroutine is left behind.
func TestWriteToDestinationError(t *testing.T) {
	src := testData(23, 8*streamSegmentBytes, true)
	z := openBytes(t, compressBytes(t, src, Options{}))
	before := runtime.NumGoroutine()
	n, err := z.WriteTo(&failWriter{n: 2*streamSegmentBytes + 1})
	if err == nil || !strings.Contains(err.Error(), "disk full") || n != 2*streamSegmentBytes {
		t.Fatalf("WriteTo = %d, %v; want %d bytes and the write error", n, err, 2*streamSegmentBytes)
	}
	// The goroutines have exited when WriteTo returns; allow the runtime a
	// generous moment to reap them.
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines before WriteTo, %d after", before, runtime.NumGoroutine())
		}
		runtime.Gosched()
	}
	var _ io.WriterTo = z
}

// oddReader returns its bytes in reads of varying, unaligned sizes.
type oddReader struct {
	b []byte
	k int
}

func (r *oddReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	r.k++
	n := copy(p[:min(len(p), 1+r.k*7919%70000)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// ReadFrom (what Compress uses) writes the same bytes as Write, whatever the
// sizes of the source's reads, with any number of workers.
func TestReadFromEqualsWrite(t *testing.T) {
	src := append(testData(24, 3<<20+4097, true), testData(25, 1<<20, false)...)
	for _, o := range []Options{{Workers: 1}, {Workers: 3}, {Algorithm: Zstd, BlockSize: 32 << 10, Workers: 2}} {
		var viaWrite memFile
		zw, err := NewWriter(&viaWrite, o)
		if err != nil {
			t.Fatal(err)
		}
		randomWrites(t, zw, src, 5)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		var viaReadFrom memFile
		if zw, err = NewWriter(&viaReadFrom, o); err != nil {
			t.Fatal(err)
		}
		if n, err := zw.ReadFrom(&oddReader{b: src}); err != nil || n != int64(len(src)) {
			t.Fatalf("%+v: ReadFrom = %d, %v", o, n, err)
		}
		if err := zw.Close(); err != nil || zw.UncompressedSize() != int64(len(src)) {
			t.Fatalf("%+v: Close: %v, size %d", o, err, zw.UncompressedSize())
		}
		if !bytes.Equal(viaWrite.b, viaReadFrom.b) {
			t.Fatalf("%+v: ReadFrom output differs from Write output", o)
		}
	}
}

// WriteTo reuses its buffers: decompressing 128 MiB allocates at most
// streamAhead segments' output buffers per worker, not fresh buffers as it goes (which a
// sync.Pool, emptied by every GC, did: faulting in and zeroing new pages cost
// about a sixth of `obd zfile -x`'s CPU time).
func TestWriteToReusesBuffers(t *testing.T) {
	const size = 128 << 20
	z := openBytes(t, compressBytes(t, testData(5, size, true), Options{}), WithBlockCache(0))
	workers := min(runtime.GOMAXPROCS(0), maxDecoders)
	// Decoded bytes of streamAhead segments per worker, and per worker the
	// compressed bytes of one (at most as many plus the LZ4 worst case's
	// overhead); 1 MiB of slack.
	limit := uint64(streamAhead*workers)*streamSegmentBytes + uint64(workers)*(streamSegmentBytes+streamSegmentBytes/4096*(512+crcSize)) + 1<<20
	var before, after runtime.MemStats
	for range 3 { // several runs, so that GCs happen in between as in a long one
		runtime.GC()
		runtime.ReadMemStats(&before)
		if n, err := z.WriteTo(io.Discard); err != nil || n != size {
			t.Fatalf("WriteTo = %d, %v", n, err)
		}
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > limit {
			t.Fatalf("WriteTo of %d MiB allocated %d bytes, want at most %d (%d workers)", size>>20, got, limit, workers)
		}
	}
}

// stallingSource holds the read at offset stallAt until a read reaches offset
// waitFor (or a generous timeout passes), as a worker descheduled mid-segment
// would hold up the segment to write next.
type stallingSource struct {
	b                []byte
	stallAt, waitFor int64
	reached          chan struct{}
	once             sync.Once
	overtaken        atomic.Bool // waitFor was read while stallAt's read was held
}

func (s *stallingSource) ReadAt(p []byte, off int64) (int, error) {
	if off <= s.waitFor && s.waitFor < off+int64(len(p)) {
		s.once.Do(func() { close(s.reached) })
	}
	if off == s.stallAt {
		select {
		case <-s.reached:
			s.overtaken.Store(true)
		case <-time.After(10 * time.Second):
		}
	}
	return copy(p, s.b[off:]), nil
}

// While the next segment to write is held up, the other workers go on reading
// and decoding the segments after it (up to streamAhead each) instead of
// waiting, and the output is still in order.
func TestWriteToWorksAheadOfStalledSegment(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	src := testData(24, 8*streamSegmentBytes, true)
	zb := compressBytes(t, src, Options{})
	z0 := openBytes(t, zb)
	perSeg := int64(streamSegmentBytes / 4096)
	fs := &stallingSource{b: zb, stallAt: z0.blockOffset(0), waitFor: z0.blockOffset(3 * perSeg), reached: make(chan struct{})}
	z, err := Open(fs, int64(len(zb)), WithBlockCache(0))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if n, err := z.WriteTo(&out); err != nil || n != int64(len(src)) || !bytes.Equal(out.Bytes(), src) {
		t.Fatalf("WriteTo = %d, %v; content equal: %v", n, err, bytes.Equal(out.Bytes(), src))
	}
	if !fs.overtaken.Load() {
		t.Fatal("segment 3 was not read while segment 0's read was held up")
	}
}

// syncMem is an in-memory io.WriterAt safe for concurrent writers; writes at
// or beyond failFrom (if > 0) fail.
type syncMem struct {
	mu       sync.Mutex
	b        []byte
	failFrom int64
	onWrite  func(off int64) // called before each write, outside the lock
}

func (m *syncMem) WriteAt(p []byte, off int64) (int, error) {
	if m.onWrite != nil {
		m.onWrite(off)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(p)
	if m.failFrom > 0 && off+int64(n) > m.failFrom {
		n = int(max(0, m.failFrom-off))
	}
	if need := off + int64(n); need > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, need-int64(len(m.b)))...)
	}
	copy(m.b[off:], p[:n])
	if n < len(p) {
		return n, errors.New("disk full")
	}
	return n, nil
}

// WriteToAt writes exactly the content into a file for every layout, as WriteTo.
func TestWriteToAtRoundTrip(t *testing.T) {
	// More segments than workers, so that each worker writes several runs.
	for _, tc := range append(streamLayouts, streamLayout{17 * streamSegmentBytes, Options{}}) {
		src := append(testData(int64(tc.size), tc.size/2, true), testData(7, tc.size-tc.size/2, false)...)
		z := openBytes(t, compressBytes(t, src, tc.o))
		f, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		n, err := z.WriteToAt(f)
		got, rerr := os.ReadFile(f.Name())
		f.Close()
		if err != nil || rerr != nil || n != int64(len(src)) || !bytes.Equal(got, src) {
			t.Fatalf("size %d %+v: WriteToAt = %d, %v (%v); content equal: %v", tc.size, tc.o, n, err, rerr, bytes.Equal(got, src))
		}
	}
}

// A bad block: WriteToAt reports the good bytes before it as written (they are,
// with every segment before it) and returns its BlockError.
func TestWriteToAtBadBlock(t *testing.T) {
	src := testData(21, 6*streamSegmentBytes, true)
	zb := compressBytes(t, src, Options{})
	z0 := openBytes(t, zb)
	blk := int64(3*streamSegmentBytes/4096 + 77) // in the fourth segment
	off := z0.blockOffset(blk)
	fs := &flakySource{b: zb, bad: [2]int64{off + 2, off + 3}, healAfter: 1 << 30}
	z, err := Open(fs, int64(len(zb)), WithBlockCache(0))
	if err != nil {
		t.Fatal(err)
	}
	var out syncMem
	n, err := z.WriteToAt(&out)
	var berr *BlockError
	if !errors.As(err, &berr) || berr.Block != blk || !errors.Is(err, ErrChecksum) {
		t.Fatalf("bad block: %v", err)
	}
	if n != blk*4096 || int64(len(out.b)) < n || !bytes.Equal(out.b[:n], src[:n]) {
		t.Fatalf("bad block: reported %d bytes written (buffer %d), want the %d good ones", n, len(out.b), blk*4096)
	}
}

// A failing destination stops the workers: the error names the offset of the
// failed write, and everything before it was written.
func TestWriteToAtDestinationError(t *testing.T) {
	src := testData(23, 8*streamSegmentBytes, true)
	z := openBytes(t, compressBytes(t, src, Options{}))
	failAt := int64(2*streamSegmentBytes + 1000)
	out := &syncMem{failFrom: failAt}
	n, err := z.WriteToAt(out)
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), fmt.Sprintf("write at %d:", failAt)) || n != failAt {
		t.Fatalf("WriteToAt = %d, %v; want %d bytes and the write error at that offset", n, err, failAt)
	}
	if !bytes.Equal(out.b[:n], src[:n]) {
		t.Fatal("the bytes before the failed write differ")
	}
}

// Each worker writes the segment it decoded at once: while the write of
// segment 0 is held up, the other worker goes on decoding and writing the
// segments after it (an in-order writer would wait for segment 0's write).
func TestWriteToAtDoesNotWaitForOrder(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	src := testData(24, 8*streamSegmentBytes, true)
	z := openBytes(t, compressBytes(t, src, Options{}), WithBlockCache(0))
	reached := make(chan struct{})
	var once sync.Once
	var overtaken atomic.Bool
	out := &syncMem{}
	out.onWrite = func(off int64) {
		switch off {
		case 3 * streamSegmentBytes:
			once.Do(func() { close(reached) })
		case 0:
			select {
			case <-reached:
				overtaken.Store(true)
			case <-time.After(10 * time.Second):
			}
		}
	}
	if n, err := z.WriteToAt(out); err != nil || n != int64(len(src)) || !bytes.Equal(out.b, src) {
		t.Fatalf("WriteToAt = %d, %v; content equal: %v", n, err, bytes.Equal(out.b, src))
	}
	if !overtaken.Load() {
		t.Fatal("segment 3 was not written while segment 0's write was held up")
	}
}

// WriteToAt allocates one output and one input buffer per worker, whatever the size.
func TestWriteToAtReusesBuffers(t *testing.T) {
	const size = 64 << 20
	z := openBytes(t, compressBytes(t, testData(5, size, true), Options{}), WithBlockCache(0))
	workers := min(runtime.GOMAXPROCS(0), maxDecoders)
	limit := uint64(workers)*(2*streamSegmentBytes+streamSegmentBytes/4096*(512+crcSize)) + 1<<20
	var before, after runtime.MemStats
	for range 3 {
		runtime.GC()
		runtime.ReadMemStats(&before)
		if n, err := z.WriteToAt(discardAt{}); err != nil || n != size {
			t.Fatalf("WriteToAt = %d, %v", n, err)
		}
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > limit {
			t.Fatalf("WriteToAt of %d MiB allocated %d bytes, want at most %d (%d workers)", size>>20, got, limit, workers)
		}
	}
}

type discardAt struct{}

func (discardAt) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
