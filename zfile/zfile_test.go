package zfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/obd-project/obd/crc32c"
)

// testData returns n bytes: random, or compressible (mostly zero with random words,
// like the reference's verify_compression data).
func testData(seed int64, n int, compressible bool) []byte {
	rng := rand.New(rand.NewSource(seed))
	b := make([]byte, n)
	if !compressible {
		rng.Read(b)
		return b
	}
	for i := 0; i+4 <= n; i += 16 {
		binary.LittleEndian.PutUint32(b[i:], rng.Uint32())
	}
	return b
}

func compressBytes(t testing.TB, src []byte, o Options) []byte {
	t.Helper()
	var m memFile
	if _, err := Compress(&m, bytes.NewReader(src), o); err != nil {
		t.Fatal(err)
	}
	return m.b
}

// checkReads compares random ReadAt results against src.
func checkReads(t *testing.T, z *Reader, src []byte, rng *rand.Rand, n int) {
	t.Helper()
	size := int64(len(src))
	for i := 0; i < n; i++ {
		off := rng.Int63n(size + 100)
		l := rng.Intn(200 << 10)
		if i%4 == 0 {
			l = rng.Intn(600)
		}
		p := make([]byte, l)
		got, err := z.ReadAt(p, off)
		want := 0
		if off < size {
			want = int(min(int64(l), size-off))
		}
		if got != want {
			t.Fatalf("ReadAt(%d, %d) = %d, want %d (err %v)", l, off, got, want, err)
		}
		if got < l && err != io.EOF {
			t.Fatalf("short ReadAt(%d, %d) = %d with err %v, want io.EOF", l, off, got, err)
		}
		if got == l && err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", l, off, err)
		}
		if got > 0 && !bytes.Equal(p[:got], src[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d, %d): wrong data", l, off)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for _, algo := range []Algorithm{LZ4, Zstd} {
		for _, bs := range []int{4096, 8192, 16384, 32768, 65536} {
			for _, noCRC := range []bool{false, true} {
				for _, compressible := range []bool{false, true} {
					for _, size := range []int{0, 1, bs - 1, bs, 3*bs + 17, 300<<10 + 5} {
						name := fmt.Sprintf("%v/bs%d/nocrc=%v/compressible=%v/size%d", algo, bs, noCRC, compressible, size)
						src := testData(int64(size+bs), size, compressible)
						o := Options{Algorithm: algo, BlockSize: bs, NoCRC: noCRC, Workers: 2}
						zb := compressBytes(t, src, o)
						z, err := Open(bytes.NewReader(zb), int64(len(zb)))
						if err != nil {
							t.Fatalf("%s: %v", name, err)
						}
						info := z.Info()
						if z.Size() != int64(size) || info.BlockSize != bs || info.Algorithm != algo || info.Verify == noCRC ||
							info.Header.Flags != 0x1b || !info.DigestChecked || info.Blocks != int64((size+bs-1)/bs) {
							t.Fatalf("%s: info %+v", name, info)
						}
						if got := decompressAll(t, zb); !bytes.Equal(got, src) {
							t.Fatalf("%s: Decompress differs", name)
						}
						if size > 0 {
							checkReads(t, z, src, rng, 20)
						}
						if err := z.Verify(); err != nil {
							t.Fatalf("%s: Verify: %v", name, err)
						}
						if IsZFile(src) {
							t.Fatalf("%s: source detected as zfile", name)
						}
					}
				}
			}
		}
	}
}

// TestLargeRandomReads mirrors the reference's verify_compression reads: unaligned
// small reads, reads of 128 KiB (more than the 64 KiB block limit), sequential reads.
func TestLargeRandomReads(t *testing.T) {
	src := testData(3, 8<<20+123, true)
	rng := rand.New(rand.NewSource(4))
	for _, cache := range []int{0, 1, 64} {
		zb := compressBytes(t, src, Options{})
		z := openBytes(t, zb, WithBlockCache(cache))
		checkReads(t, z, src, rng, 300)
		for _, n := range []int{512, 16 << 10, 128 << 10, 4 << 20} { // 4 MiB: batches hit maxBatch
			if got := decompressSHA(t, z, n); got != sha(src) {
				t.Fatalf("cache %d: sequential reads of %d differ", cache, n)
			}
		}
	}
}

func TestConcurrentReads(t *testing.T) {
	src := testData(5, 2<<20, true)
	zb := compressBytes(t, src, Options{Algorithm: Zstd, BlockSize: 8192})
	z := openBytes(t, zb, WithBlockCache(4))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for i := 0; i < 300; i++ {
				off := rng.Int63n(int64(len(src)))
				p := make([]byte, rng.Intn(20000))
				n, _ := z.ReadAt(p, off)
				if !bytes.Equal(p[:n], src[off:off+int64(n)]) {
					errs <- fmt.Errorf("wrong data at %d", off)
					return
				}
			}
		}(int64(g))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// randomWrites feeds src to w in chunks of random sizes 1..8192 (as the reference's
// verify_builder).
func randomWrites(t testing.TB, w io.Writer, src []byte, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	for len(src) > 0 {
		n := min(len(src), 1+rng.Intn(8192))
		if _, err := w.Write(src[:n]); err != nil {
			t.Fatal(err)
		}
		src = src[n:]
	}
}

func TestParallelEqualsSingle(t *testing.T) {
	src := append(testData(9, 3<<20, true), testData(10, 1<<20+333, false)...)
	for _, algo := range []Algorithm{LZ4, Zstd} {
		var ref []byte
		for _, workers := range []int{1, 2, 4, 7} {
			var m memFile
			zw, err := NewWriter(&m, Options{Algorithm: algo, Workers: workers, BlockSize: 8192})
			if err != nil {
				t.Fatal(err)
			}
			randomWrites(t, zw, src, int64(workers))
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
			if zw.Size() != int64(len(m.b)) || zw.UncompressedSize() != int64(len(src)) {
				t.Fatalf("sizes %d %d, want %d %d", zw.Size(), zw.UncompressedSize(), len(m.b), len(src))
			}
			if ref == nil {
				ref = m.b
				if got := decompressAll(t, ref); !bytes.Equal(got, src) {
					t.Fatalf("%v: round trip differs", algo)
				}
			} else if !bytes.Equal(m.b, ref) {
				t.Fatalf("%v: %d workers output differs from 1 worker", algo, workers)
			}
		}
	}
}

// A pure io.Writer gets the reference overlaybd-zfile layout: header flags 0x13 with
// empty index fields; readers use the trailer.
func TestPlainWriterKeepsHeader(t *testing.T) {
	src := testData(11, 100000, true)
	var buf bytes.Buffer // not an io.WriterAt
	if _, err := Compress(&buf, bytes.NewReader(src), Options{}); err != nil {
		t.Fatal(err)
	}
	zb := buf.Bytes()
	h, _ := decodeRecord(zb)
	if h.Flags != 0x13 || h.IndexOffset != 0 || h.IndexSize != 0 || h.OriginalSize != 0 {
		t.Fatalf("header %+v", h)
	}
	z := openBytes(t, zb)
	if z.Info().Trailer == nil || z.Info().Trailer.Flags != 0x16 {
		t.Fatalf("trailer %+v", z.Info().Trailer)
	}
	if got := decompressAll(t, zb); !bytes.Equal(got, src) {
		t.Fatal("round trip differs")
	}
	// With a WriterAt, only the header differs, and it carries the index.
	zb2 := compressBytes(t, src, Options{})
	if !bytes.Equal(zb[HeaderSize:], zb2[HeaderSize:]) {
		t.Fatal("body differs between WriterAt and plain writer")
	}
	h2, _ := decodeRecord(zb2)
	tr, _ := decodeRecord(zb2[len(zb2)-HeaderSize:])
	if h2.Flags != 0x1b || h2.IndexOffset != tr.IndexOffset || h2.IndexSize != tr.IndexSize || h2.IndexCRC != tr.IndexCRC || h2.OriginalSize != 100000 {
		t.Fatalf("overwritten header %+v, trailer %+v", h2, tr)
	}
}

func TestWriterOptionsRejected(t *testing.T) {
	for _, o := range []Options{{BlockSize: 2048}, {BlockSize: 3 << 12}, {BlockSize: 128 << 10}, {Algorithm: 7}} {
		if _, err := NewWriter(io.Discard, o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestWriterPropagatesErrors(t *testing.T) {
	for _, workers := range []int{1, 4} {
		zw, err := NewWriter(&failWriter{n: 5000}, Options{Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		_, werr := zw.Write(testData(1, 1<<20, false))
		cerr := zw.Close()
		if werr == nil && cerr == nil {
			t.Fatalf("workers %d: write error swallowed", workers)
		}
	}
}

func TestIsZFile(t *testing.T) {
	zb := compressBytes(t, []byte("hello"), Options{})
	if !IsZFile(zb) {
		t.Fatal("own output not detected")
	}
	if IsZFile(zb[len(zb)-HeaderSize:]) {
		t.Fatal("trailer detected as header")
	}
	if IsZFile(zb[:30]) || IsZFile(nil) {
		t.Fatal("short input detected")
	}
}

// --- corruption ---

func mustFail(t *testing.T, zb []byte, what string) error {
	t.Helper()
	_, err := Open(bytes.NewReader(zb), int64(len(zb)))
	if err == nil {
		t.Fatalf("%s: Open succeeded", what)
	}
	if !errors.Is(err, ErrFormat) {
		t.Fatalf("%s: error %v does not wrap ErrFormat", what, err)
	}
	t.Logf("%s: %v", what, err)
	return err
}

func TestCorruptBlock(t *testing.T) {
	src := testData(12, 64<<10, true)
	for _, algo := range []Algorithm{LZ4, Zstd} {
		zb := compressBytes(t, src, Options{Algorithm: algo})
		z := openBytes(t, zb)
		bad := int64(5)
		off := z.blockOffset(bad)
		zb[off+3] ^= 0x10
		var berr *BlockError
		_, err := z.ReadAt(make([]byte, 100), bad*4096+10)
		if !errors.As(err, &berr) || !errors.Is(err, ErrChecksum) {
			t.Fatalf("%v: read of corrupt block: %v", algo, err)
		}
		if berr.Block != bad || berr.Off != off || berr.Len != int64(z.lens[bad]) || berr.Tries != 1 {
			t.Fatalf("%v: BlockError %+v", algo, berr)
		}
		// A read spanning the bad block fails; neighbours still read fine.
		if n, err := z.ReadAt(make([]byte, 3*4096), (bad-1)*4096); err == nil {
			t.Fatalf("%v: spanning read returned %d bytes and no error", algo, n)
		}
		for _, blk := range []int64{0, bad - 1, bad + 1, 15} {
			p := make([]byte, 4096)
			if _, err := z.ReadAt(p, blk*4096); err != nil || !bytes.Equal(p, src[blk*4096:(blk+1)*4096]) {
				t.Fatalf("%v: block %d: %v", algo, blk, err)
			}
		}
		if err := z.Verify(); !errors.As(err, &berr) || berr.Block != bad {
			t.Fatalf("%v: Verify: %v", algo, err)
		}
	}
}

// Without CRCs, a corrupted block must still not yield wrong-length data silently:
// decompression errors are reported as BlockErrors.
func TestCorruptBlockNoCRC(t *testing.T) {
	src := testData(13, 16<<10, true)
	zb := compressBytes(t, src, Options{NoCRC: true})
	z := openBytes(t, zb)
	off := z.blockOffset(1)
	for i := int64(0); i < int64(z.lens[1]); i++ {
		zb[off+i] = 0xff
	}
	var berr *BlockError
	if _, err := z.ReadAt(make([]byte, 4096), 4096); !errors.As(err, &berr) || berr.Block != 1 {
		t.Fatalf("read: %v", err)
	}
}

// The reference's validation_check: overwrite 8 KiB at offset 8192 → Verify fails.
func TestValidationCheck(t *testing.T) {
	zb := compressBytes(t, testData(14, 1<<20, true), Options{})
	z := openBytes(t, zb)
	if err := z.Verify(); err != nil {
		t.Fatal(err)
	}
	copy(zb[8192:], testData(15, 8192, false))
	if err := z.Verify(); err == nil {
		t.Fatal("Verify passed after corruption")
	}
}

func TestCorruptStructure(t *testing.T) {
	src := testData(16, 40000, true)
	base := compressBytes(t, src, Options{})
	plain := func() []byte { // header 0x13: index taken from the trailer
		var buf bytes.Buffer
		Compress(&buf, bytes.NewReader(src), Options{})
		return buf.Bytes()
	}
	cp := func(b []byte) []byte { return append([]byte(nil), b...) }
	le := binary.LittleEndian
	// rewrite re-encodes the record at off after mutating it, keeping the digest valid.
	rewrite := func(b []byte, off int, f func(r *Record)) []byte {
		r, _ := decodeRecord(b[off:])
		f(&r)
		copy(b[off:], r.encode())
		return b
	}
	tail := func(b []byte) int { return len(b) - HeaderSize }

	// ht_check: byte 400 of a digest-flagged header changed.
	b := cp(base)
	le.PutUint32(b[400:], 0xdeadbeef)
	mustFail(t, b, "header byte 400")
	mustFail(t, b[:HeaderSize+100], "truncated to a few blocks")
	hdr0, _ := decodeRecord(base)
	mustFail(t, base[:hdr0.IndexOffset+6], "truncated inside the jump table")
	mustFail(t, base[:700], "shorter than header+trailer")
	b = plain()
	mustFail(t, b[:len(b)-1], "truncated (trailer misplaced)")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.IndexSize = MaxBlocks + 1 }), "index_size 1e9+1 (header)")
	mustFail(t, rewrite(plain(), tail(plain()), func(r *Record) { r.IndexSize = MaxBlocks + 1 }), "index_size 1e9+1 (trailer)")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.IndexOffset = uint64(len(base)) - 8 }), "jump table past EOF")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.IndexOffset = 1 << 62 }), "jump table offset huge")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.IndexSize++ }), "index_size vs original size")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.BlockSize = 3000 }), "block size not power of two")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.BlockSize = 1 << 17 }), "block size too big")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.Algorithm = 0 }), "minilzo")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.DictSize = 16 }), "dictionary")
	mustFail(t, rewrite(cp(base), 0, func(r *Record) { r.Flags &^= FlagHeader }), "header bit clear")
	mustFail(t, rewrite(plain(), 0, func(r *Record) { r.Flags &^= FlagDataFile }), "not a data file")
	mustFail(t, rewrite(plain(), tail(plain()), func(r *Record) { r.Flags &^= FlagSealed }), "trailer not sealed")
	b = plain()
	b[tail(b)+300] = 1
	mustFail(t, b, "trailer digest")
	b = cp(base)
	b[0] = 'X'
	mustFail(t, b, "bad magic")
	// Jump table corruption is caught by index_crc; without the digest flag, by the
	// per-entry checks.
	hdr, _ := decodeRecord(base)
	b = cp(base)
	le.PutUint32(b[hdr.IndexOffset:], 0xffffff)
	mustFail(t, b, "index_crc")
	noDigest := func(r *Record) { r.Flags &^= FlagDigest }
	b = rewrite(cp(base), 0, noDigest)
	le.PutUint32(b[hdr.IndexOffset:], 4)
	mustFail(t, b, "block length <= 4 with verify")
	b = rewrite(cp(base), 0, noDigest)
	le.PutUint32(b[hdr.IndexOffset:], 1<<30)
	mustFail(t, b, "block length huge")
	b = rewrite(cp(base), 0, noDigest)
	le.PutUint32(b[hdr.IndexOffset+4:], le.Uint32(b[hdr.IndexOffset+4:])+2000)
	mustFail(t, b, "blocks run into the jump table")
	// A legacy entry changed within the valid lengths: the lengths no longer sum
	// to the jump table's offset (a block that shrank would otherwise shift every
	// later block).
	for _, d := range []int32{-1, 1, -8} {
		b = rewrite(cp(base), 0, noDigest)
		le.PutUint32(b[hdr.IndexOffset+4:], uint32(int32(le.Uint32(b[hdr.IndexOffset+4:]))+d))
		mustFail(t, b, fmt.Sprintf("legacy block length changed by %d", d))
	}
}

// shortBlob is the first bytes of a blob whose claimed size is much larger.
type shortBlob []byte

func (b shortBlob) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// A header claiming the largest jump table (1e9 entries) in a blob claimed to be
// big enough, but which really holds a few KiB: Open fails on the missing bytes
// after allocating memory for what was read, not 4-8 GB for the claim.
func TestHugeClaimedJumpTableBounded(t *testing.T) {
	rec := Record{Flags: FlagHeader | FlagDataFile | FlagHeaderOverwrite | FlagDigest,
		BlockSize: MaxBlockSize, Algorithm: LZ4, IndexOffset: HeaderSize,
		IndexSize: MaxBlocks, OriginalSize: MaxBlocks * MaxBlockSize}
	real := append(rec.encode(), make([]byte, 64<<10)...)
	for i := HeaderSize; i < len(real); i += 4 {
		binary.LittleEndian.PutUint32(real[i:], 1000)
	}
	claimed := int64(HeaderSize) + 4*MaxBlocks + HeaderSize
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Open(shortBlob(real), claimed)
	runtime.ReadMemStats(&after)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("open of a truncated huge jump table: %v", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Errorf("open allocated %d MiB for a claim the blob does not back", got>>20)
	}
	t.Logf("%v", err)
}

// Legacy files: garbage in flag bits >= 5, digest and reserved must be ignored when
// bit 4 is clear.
func TestLegacyGarbageIgnored(t *testing.T) {
	src := testData(17, 30000, true)
	var buf bytes.Buffer
	Compress(&buf, bytes.NewReader(src), Options{})
	b := buf.Bytes()
	le := binary.LittleEndian
	for _, off := range []int{0, len(b) - HeaderSize} {
		le.PutUint64(b[off+32:], le.Uint64(b[off+32:])&^FlagDigest|0x7ffea4640b40)
		le.PutUint32(b[off+28:], 0xa07f)     // digest
		le.PutUint32(b[off+64:], 0xa4640b68) // index_crc
		le.PutUint32(b[off+68:], 0x7ffe)     // reserved
		copy(b[off+89:off+96], "garbage")    // pad
		copy(b[off+100:off+200], testData(1, 100, false))
	}
	z := openBytes(t, b)
	if !z.Info().Legacy || z.Info().DigestChecked {
		t.Fatalf("info %+v", z.Info())
	}
	if got := decompressAll(t, b); !bytes.Equal(got, src) {
		t.Fatal("legacy round trip differs")
	}
}

// --- evict and retry ---

// flakySource returns corrupted bytes for a range until it has been evicted
// `healAfter` times.
type flakySource struct {
	mu        sync.Mutex
	b         []byte
	bad       [2]int64 // corrupted range
	evictions int
	healAfter int
	evicted   [][2]int64
}

func (f *flakySource) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := copy(p, f.b[off:])
	if f.evictions < f.healAfter {
		for i := 0; i < n; i++ {
			if o := off + int64(i); o >= f.bad[0] && o < f.bad[1] {
				p[i] ^= 0x55
			}
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *flakySource) Evict(off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evictions++
	f.evicted = append(f.evicted, [2]int64{off, n})
	return nil
}

func TestEvictAndRetry(t *testing.T) {
	src := testData(18, 64<<10, true)
	zb := compressBytes(t, src, Options{})
	z0 := openBytes(t, zb)
	blk := int64(3)
	off, l := z0.blockOffset(blk), int64(z0.lens[blk])
	for _, tc := range []struct {
		healAfter int
		ok        bool
	}{{1, true}, {2, true}, {maxTries - 1, true}, {maxTries, false}, {1 << 30, false}} {
		fs := &flakySource{b: zb, bad: [2]int64{off + 2, off + 3}, healAfter: tc.healAfter}
		z, err := Open(fs, int64(len(zb)), WithBlockCache(0))
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 3*4096)
		_, err = z.ReadAt(p, (blk-1)*4096)
		if tc.ok {
			if err != nil || !bytes.Equal(p, src[(blk-1)*4096:(blk+2)*4096]) {
				t.Fatalf("healAfter %d: %v", tc.healAfter, err)
			}
			if fs.evictions != tc.healAfter {
				t.Fatalf("healAfter %d: %d evictions", tc.healAfter, fs.evictions)
			}
		} else {
			var berr *BlockError
			if !errors.As(err, &berr) || berr.Tries != maxTries || berr.Block != blk || !errors.Is(err, ErrChecksum) {
				t.Fatalf("healAfter %d: %v", tc.healAfter, err)
			}
			if fs.evictions != maxTries-1 {
				t.Fatalf("healAfter %d: %d evictions, want %d", tc.healAfter, fs.evictions, maxTries-1)
			}
		}
		for _, e := range fs.evicted {
			if e != [2]int64{off, l} {
				t.Fatalf("evicted %v, want block range [%d, +%d)", e, off, l)
			}
		}
	}
}

// Local files (no Evict) fail at once: re-reading the same bytes cannot help.
func TestNoEvictNoRetry(t *testing.T) {
	zb := compressBytes(t, testData(19, 20000, true), Options{})
	z := openBytes(t, zb)
	zb[z.blockOffset(2)] ^= 1
	var berr *BlockError
	if _, err := z.ReadAt(make([]byte, 10), 2*4096); !errors.As(err, &berr) || berr.Tries != 1 {
		t.Fatalf("%v", err)
	}
}

type evictFails struct{ *flakySource }

func (e evictFails) Evict(off, n int64) error { return errors.New("cache busy") }

func TestEvictErrorReported(t *testing.T) {
	zb := compressBytes(t, testData(20, 20000, true), Options{})
	z0 := openBytes(t, zb)
	off := z0.blockOffset(1)
	fs := evictFails{&flakySource{b: zb, bad: [2]int64{off, off + 1}, healAfter: 1}}
	z, err := Open(fs, int64(len(zb)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := z.ReadAt(make([]byte, 4096), 4096); err == nil || !errors.Is(err, ErrChecksum) {
		t.Fatalf("%v", err)
	}
}

func TestReadAtEdges(t *testing.T) {
	src := testData(21, 10000, true)
	z := openBytes(t, compressBytes(t, src, Options{}))
	if _, err := z.ReadAt(make([]byte, 1), -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	if n, err := z.ReadAt(make([]byte, 10), 10000); n != 0 || err != io.EOF {
		t.Fatalf("read at EOF: %d %v", n, err)
	}
	if n, err := z.ReadAt(nil, 5); n != 0 || err != nil {
		t.Fatalf("empty read: %d %v", n, err)
	}
	empty := openBytes(t, compressBytes(t, nil, Options{}))
	if empty.Size() != 0 || empty.Info().Blocks != 0 {
		t.Fatalf("empty: %+v", empty.Info())
	}
	if n, err := empty.ReadAt(make([]byte, 10), 0); n != 0 || err != io.EOF {
		t.Fatalf("empty read: %d %v", n, err)
	}
}

func TestBlockCRCIsSalted(t *testing.T) {
	zb := compressBytes(t, testData(22, 4096, true), Options{})
	z := openBytes(t, zb)
	raw := zb[HeaderSize : HeaderSize+int(z.lens[0])]
	data, stored := raw[:len(raw)-4], binary.LittleEndian.Uint32(raw[len(raw)-4:])
	if stored != crc32c.Raw(100007, data) {
		t.Fatal("block CRC is not raw crc32c seeded with 100007")
	}
}

// A pipe is an *os.File (io.WriterAt + io.Seeker) that cannot seek: the writer must
// keep the 0x13 header instead of failing at Close.
func TestPipeDestination(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	src := testData(23, 50000, true)
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(pr); done <- b }()
	if _, err := Compress(pw, bytes.NewReader(src), Options{}); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	zb := <-done
	if h, _ := decodeRecord(zb); h.Flags != 0x13 {
		t.Fatalf("header flags %#x, want 0x13", h.Flags)
	}
	if !bytes.Equal(decompressAll(t, zb), src) {
		t.Fatal("round trip through a pipe differs")
	}
}

// An *os.File positioned after other data gets its header rewritten where it began.
func TestFileAtOffset(t *testing.T) {
	f, err := os.Create(t.TempDir() + "/z")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write([]byte("prefix"))
	src := testData(24, 30000, true)
	if _, err := Compress(f, bytes.NewReader(src), Options{}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(f.Name())
	if string(b[:6]) != "prefix" {
		t.Fatal("prefix overwritten")
	}
	if h, _ := decodeRecord(b[6:]); h.Flags != 0x1b {
		t.Fatalf("header flags %#x, want 0x1b", h.Flags)
	}
	if !bytes.Equal(decompressAll(t, b[6:]), src) {
		t.Fatal("round trip differs")
	}
}

// Large reads decode their whole blocks in parallel (decodeBatch): a bad block in
// the middle fails the read with the bytes before it counted, and a block that
// heals on re-read (Evicter) is fetched again while its neighbours decode.
func TestParallelDecodeErrors(t *testing.T) {
	src := testData(19, 1<<20, true)
	zb := compressBytes(t, src, Options{})
	z0 := openBytes(t, zb)
	blk := int64(100)
	off := z0.blockOffset(blk)
	for _, healAfter := range []int{1, 1 << 30} {
		fs := &flakySource{b: zb, bad: [2]int64{off + 2, off + 3}, healAfter: healAfter}
		z, err := Open(fs, int64(len(zb)), WithBlockCache(0))
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, len(src))
		n, err := z.ReadAt(p, 0)
		if healAfter == 1 {
			if err != nil || n != len(src) || !bytes.Equal(p, src) {
				t.Fatalf("healing block: n %d, %v", n, err)
			}
			continue
		}
		var berr *BlockError
		if !errors.As(err, &berr) || berr.Block != blk || !errors.Is(err, ErrChecksum) {
			t.Fatalf("bad block: %v", err)
		}
		if n != int(blk)*4096 || !bytes.Equal(p[:n], src[:n]) {
			t.Fatalf("bad block: n = %d, want %d good bytes", n, blk*4096)
		}
	}
}
