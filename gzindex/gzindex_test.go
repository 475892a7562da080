package gzindex

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/obd-project/obd/crc32c"
)

// Reference data (testdata/golden/reference/README.md, d_ext4): t0.gzip.meta is the
// index turboOCI-apply made of layer0.tar.gz; layer0.tar is its uncompressed content.
const ref = "../testdata/golden/reference/d_ext4/"

func load(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(ref + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadReferenceIndex(t *testing.T) {
	gz, idx, tarData := load(t, "layer0.tar.gz"), load(t, "t0.gzip.meta"), load(t, "layer0.tar")
	r, err := Open(bytes.NewReader(gz), int64(len(gz)), bytes.NewReader(idx), int64(len(idx)), "t0.gzip.meta")
	if err != nil {
		t.Fatal(err)
	}
	if r.Size() != int64(len(tarData)) {
		t.Fatalf("size %d, want %d", r.Size(), len(tarData))
	}
	size := int64(len(tarData))
	for _, c := range []struct{ off, n int64 }{{0, 1}, {0, 10}, {1000, 100000}, {4096, 512}, {size - 10, 10}, {size - 1, 1}, {0, size}} {
		p := make([]byte, c.n)
		n, err := r.ReadAt(p, c.off)
		if err != nil || int64(n) != c.n || !bytes.Equal(p, tarData[c.off:c.off+c.n]) {
			t.Errorf("ReadAt(%d, %d) = %d, %v; want the tar's bytes", c.n, c.off, n, err)
		}
	}
	// Past the end: short reads with io.EOF, as the reference's pread.
	p := make([]byte, 1000)
	if n, err := r.ReadAt(p, size-400); n != 400 || err != io.EOF || !bytes.Equal(p[:400], tarData[size-400:]) {
		t.Errorf("read across the end: %d, %v; want 400, EOF", n, err)
	}
	if n, err := r.ReadAt(p, size); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v; want 0, EOF", n, err)
	}
	if _, err := r.ReadAt(p, -1); err == nil {
		t.Error("read at a negative offset succeeded")
	}
}

// TestDamagedIndex: a damaged or mismatched index fails to open with an error
// naming the file and the offset of the bad field; it never reads wrong data.
func TestDamagedIndex(t *testing.T) {
	gz, idx := load(t, "layer0.tar.gz"), load(t, "t0.gzip.meta")
	resum := func(b []byte) { binary.LittleEndian.PutUint32(b[329:], crc32c.Checksum(b[:329])) }
	for _, c := range []struct {
		name   string
		damage func([]byte) []byte
		gzSize int64
		want   string
	}{
		{"magic", func(b []byte) []byte { b[0] = 'x'; return b }, 0, "offset 0: magic"},
		{"checksum", func(b []byte) []byte { b[100]++; return b }, 0, "offset 329: header checksum"},
		{"version", func(b []byte) []byte { b[8] = 2; resum(b); return b }, 0, "offset 8: major version"},
		{"entry size", func(b []byte) []byte { b[21] = 30; resum(b); return b }, 0, "offset 21: entry size"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, 0, "offset 41: index file size"},
		{"short", func(b []byte) []byte { return b[:100] }, 0, "shorter than the 333-byte header"},
		{"other gzip", func(b []byte) []byte { return b }, int64(len(gz)) - 1, "offset 33: made for a gzip file"},
		{"entries", func(b []byte) []byte { b[len(b)-3] ^= 0xff; return b }, 0, "entries"},
	} {
		b := c.damage(bytes.Clone(idx))
		gzSize := int64(len(gz))
		if c.gzSize != 0 {
			gzSize = c.gzSize
		}
		_, err := Open(bytes.NewReader(gz), gzSize, bytes.NewReader(b), int64(len(b)), "t0.gzip.meta")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "t0.gzip.meta") {
			t.Errorf("%s: %v, want an error naming t0.gzip.meta with %q", c.name, err, c.want)
		}
	}
}

// TestBitShifter: the stream starts shift bits into the first byte, LSB first, as
// deflate reads bits.
func TestBitShifter(t *testing.T) {
	in := []byte{0b10110100, 0b01100011, 0b11110000}
	bit := func(i int) byte { return in[i/8] >> (i % 8) & 1 }
	for shift := uint8(1); shift < 8; shift++ {
		out, _ := io.ReadAll(&bitShifter{r: bytes.NewReader(in), shift: shift})
		if len(out) != len(in) {
			t.Fatalf("shift %d: %d bytes, want %d", shift, len(out), len(in))
		}
		for i := 0; i < len(in)*8-int(shift); i++ {
			if got := out[i/8] >> (i % 8) & 1; got != bit(i+int(shift)) {
				t.Fatalf("shift %d: bit %d is %d, want %d", shift, i, got, bit(i+int(shift)))
			}
		}
	}
}

// countingReaderAt counts the reads of the gzip file.
type countingReaderAt struct {
	r io.ReaderAt
	n atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.n.Add(1)
	return c.r.ReadAt(p, off)
}

// TestSpanCached: reads within one checkpoint's span inflate it once.
func TestSpanCached(t *testing.T) {
	gz, idx, tarData := load(t, "layer0.tar.gz"), load(t, "t0.gzip.meta"), load(t, "layer0.tar")
	c := &countingReaderAt{r: bytes.NewReader(gz)}
	r, err := Open(c, int64(len(gz)), bytes.NewReader(idx), int64(len(idx)), "t0.gzip.meta")
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	for off := int64(0); off+4096 <= int64(len(tarData)); off += 4096 {
		if _, err := r.ReadAt(p, off); err != nil || !bytes.Equal(p, tarData[off:off+4096]) {
			t.Fatalf("ReadAt(4096, %d): %v or wrong bytes", off, err)
		}
	}
	// One inflate of the span: its compressed bytes in reads of the 64 KiB buffer.
	if max := int64(len(gz))/readBuf + 2; c.n.Load() > max {
		t.Errorf("%d reads of the gzip file for %d KiB read in 4 KiB pieces, want at most %d (one inflate)", c.n.Load(), len(tarData)>>10, max)
	}
}

// FuzzGzindexOpen: an index from outside (any bytes) opens with an error or reads
// with one; it never panics or hangs. With fixup the header's size and checksum
// fields are made to match, so that the fuzzer reaches the entries and the reads.
func FuzzGzindexOpen(f *testing.F) {
	gz, err := os.ReadFile(ref + "layer0.tar.gz")
	if err != nil {
		f.Fatal(err)
	}
	idx, err := os.ReadFile(ref + "t0.gzip.meta")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(idx, false, int64(0))
	f.Add(idx, true, int64(100000))
	f.Add(idx[:headerSize], true, int64(1))
	f.Add(uncompressedIndex(int64(len(gz)), 1<<20, 10, 100, 5000), false, int64(0))
	f.Fuzz(func(t *testing.T, b []byte, fixup bool, off int64) {
		if fixup && len(b) >= headerSize {
			binary.LittleEndian.PutUint64(b[41:], uint64(len(b)))
			binary.LittleEndian.PutUint32(b[329:], crc32c.Checksum(b[:329]))
		}
		r, err := Open(bytes.NewReader(gz), int64(len(gz)), bytes.NewReader(b), int64(len(b)), "fuzz.gzip.meta")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.gzip.meta") {
				t.Errorf("error does not name the index: %v", err)
			}
			return
		}
		p := make([]byte, 4096)
		for _, o := range []int64{0, off, r.Size() / 2, r.Size() - 1} {
			if n, err := r.ReadAt(p, o); n < 0 || n > len(p) || err == nil && n != len(p) {
				t.Errorf("ReadAt(%d, %d) = %d, %v", len(p), o, n, err)
			}
		}
	})
}

// uncompressedIndex is an index of gz with plain windows (all zero) and checkpoints
// at the uncompressed offsets dePos, each starting the deflate stream at enPos.
func uncompressedIndex(gzSize, usize, enPos int64, dePos ...int64) []byte {
	le := binary.LittleEndian
	start := int64(headerSize + windowSize*len(dePos))
	b := make([]byte, start+int64(entrySize*len(dePos)))
	copy(b, magic)
	b[8] = 1
	le.PutUint32(b[17:], windowSize)
	le.PutUint32(b[21:], entrySize)
	le.PutUint64(b[25:], uint64(len(dePos)))
	le.PutUint64(b[33:], uint64(gzSize))
	le.PutUint64(b[41:], uint64(len(b)))
	le.PutUint64(b[49:], uint64(usize))
	le.PutUint64(b[313:], uint64(start))
	le.PutUint64(b[321:], uint64(entrySize*len(dePos)))
	le.PutUint32(b[329:], crc32c.Checksum(b[:329]))
	for i, d := range dePos {
		e := b[start+int64(i*entrySize):]
		le.PutUint64(e, uint64(d))
		le.PutUint64(e[8:], uint64(enPos))
		le.PutUint64(e[16:], uint64(headerSize+i*windowSize))
		le.PutUint32(e[25:], windowSize)
	}
	return b
}

// TestFirstCheckpointNotAtStart: an index whose first checkpoint lies past offset 0
// cannot read what is before it; it says so (it neither panics nor reads from the
// wrong place).
func TestFirstCheckpointNotAtStart(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(bytes.Repeat([]byte("obd"), 1000))
	zw.Close()
	gz := buf.Bytes()
	idx := uncompressedIndex(int64(len(gz)), 3000, 10, 100)
	r, err := Open(bytes.NewReader(gz), int64(len(gz)), bytes.NewReader(idx), int64(len(idx)), "first.gzip.meta")
	if err != nil {
		return // refusing it at Open is as good
	}
	p := make([]byte, 10)
	if _, err := r.ReadAt(p, 0); err == nil || !strings.Contains(err.Error(), "first.gzip.meta") {
		t.Errorf("ReadAt before the first checkpoint: %v, want an error naming the index", err)
	}
}

// TestSpanCachedOnce: two reads that miss the cache together inflate the span twice
// but cache it once, so that it does not take two of the cache's places.
func TestSpanCachedOnce(t *testing.T) {
	gz, idx := load(t, "layer0.tar.gz"), load(t, "t0.gzip.meta")
	var arrived sync.WaitGroup
	arrived.Add(2)
	var first atomic.Int32
	gate := readerAtFunc(func(p []byte, off int64) (int, error) {
		if first.Add(1) <= 2 {
			arrived.Done()
			arrived.Wait()
		}
		return bytes.NewReader(gz).ReadAt(p, off)
	})
	r, err := Open(gate, int64(len(gz)), bytes.NewReader(idx), int64(len(idx)), "t0.gzip.meta")
	if err != nil {
		t.Fatal(err)
	}
	var g sync.WaitGroup
	for range 2 {
		g.Add(1)
		go func() {
			defer g.Done()
			if _, err := r.ReadAt(make([]byte, 100), 0); err != nil {
				t.Error(err)
			}
		}()
	}
	g.Wait()
	if len(r.chunks) != 1 {
		t.Errorf("%d cached spans after two reads of one span, want 1", len(r.chunks))
	}
}

type readerAtFunc func([]byte, int64) (int, error)

func (f readerAtFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }
