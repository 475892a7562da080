package zfile

import (
	"bytes"
	"math/rand"
	"syscall"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// checkLZ4Compat compresses src with lz4Compressor.compress and with pierrec/lz4's
// CompressorCCompat (liblz4's bytes) and fails unless the outputs are identical
// and decode back to src. Both compressors are reused across calls, as the
// writer's are.
func checkLZ4Compat(t testing.TB, c *lz4Compressor, ref *lz4.CompressorCCompat, src []byte) {
	t.Helper()
	want := make([]byte, lz4.CompressBlockBound(len(src)))
	n, err := ref.CompressBlock(src, want)
	if err != nil || n == 0 {
		t.Fatalf("CompressorCCompat(%d bytes): n=%d err=%v", len(src), n, err)
	}
	want = want[:n]
	const prefix = "prefix" // compress appends
	got := c.compress([]byte(prefix), src)
	if string(got[:len(prefix)]) != prefix {
		t.Fatalf("%d-byte input: prefix overwritten", len(src))
	}
	got = got[len(prefix):]
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%d-byte input: output differs from CompressorCCompat at byte %d (lengths %d, %d)", len(src), i, len(got), len(want))
	}
	dec := make([]byte, len(src))
	if m, err := lz4.UncompressBlock(got, dec); len(src) > 0 && (err != nil || m != len(src) || !bytes.Equal(dec, src)) {
		t.Fatalf("%d-byte input: round trip: n=%d err=%v", len(src), m, err)
	}
}

// lz4Corpus returns the inputs the differential test runs on, by name.
func lz4Corpus(t testing.TB) map[string][]byte {
	rng := rand.New(rand.NewSource(13))
	random := make([]byte, 70000)
	rng.Read(random)
	text := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog; 0123456789.\n"), 1300)
	for i := 0; i < len(text); i += 97 { // vary it so matches have mixed lengths and offsets
		text[i] = byte('a' + rng.Intn(26))
	}
	// Short repeating periods (runs, overlapping matches) and long ones (offsets near 64 KiB).
	var periods []byte
	for _, p := range []int{1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 255, 4096, 40000} {
		periods = append(periods, bytes.Repeat(random[:p], 70000/p+1)[:70000]...)
	}
	c := map[string][]byte{
		"zero":       make([]byte, 70000),
		"random":     random,
		"text":       text,
		"sparse":     testData(5, 70000, true),
		"periods":    periods,
		"legacyExt4": legacyExt4(t),
		"raw4mLZ4":   readGolden(t, "reference/c_zfile/raw4m.lz4.zfile"),
		"d0commit":   readGolden(t, "reference/d_ext4/d0.commit"),
	}
	// Mixed: random head, zero tail and the reverse, so matches end at the input's end.
	c["mixed"] = append(append([]byte(nil), random[:30000]...), make([]byte, 40000)...)
	c["mixed2"] = append(make([]byte, 40000), random[:30000]...)
	return c
}

// TestLZ4CompatEdges: every size from 0 to 300 and around each limit (12/13, the
// minimum length; 64 KiB; 64 KiB + 11, the byU16 limit) on every kind of input.
func TestLZ4CompatEdges(t *testing.T) {
	c := new(lz4Compressor)
	var ref lz4.CompressorCCompat
	var sizes []int
	for n := 0; n <= 300; n++ {
		sizes = append(sizes, n)
	}
	for _, edge := range []int{4096, 8192, 16384, 32768, 64 << 10, lz4U16Limit - 1} {
		for n := edge - 20; n <= min(edge+20, lz4U16Limit-1); n++ {
			sizes = append(sizes, n)
		}
	}
	for name, data := range lz4Corpus(t) {
		for _, n := range sizes {
			if n > len(data) {
				continue
			}
			for _, off := range []int{0, len(data) - n} { // starts and ends of inputs
				checkLZ4Compat(t, c, &ref, data[off:off+n])
				if t.Failed() {
					t.Fatalf("input %s[%d:%d]", name, off, off+n)
				}
			}
		}
	}
}

// TestLZ4CompatBlocks: every 4 KiB and 64 KiB block of the corpus, the way the
// writer cuts its input, plus a sweep of sizes from 0 to 64 KiB + 10.
func TestLZ4CompatBlocks(t *testing.T) {
	c := new(lz4Compressor)
	var ref lz4.CompressorCCompat
	for name, data := range lz4Corpus(t) {
		for _, bs := range []int{4 << 10, 64 << 10, lz4U16Limit - 1} {
			for off := 0; off < len(data); off += bs {
				checkLZ4Compat(t, c, &ref, data[off:min(off+bs, len(data))])
				if t.Failed() {
					t.Fatalf("input %s, block size %d, offset %d", name, bs, off)
				}
			}
		}
		for n := 0; n < min(len(data), lz4U16Limit); n += 997 {
			checkLZ4Compat(t, c, &ref, data[:n])
		}
	}
}

// FuzzLZ4Compat: lz4Compressor.compress's output equals CompressorCCompat's for any input
// it accepts (the data is repeated to reach the longer lengths fuzzing rarely makes).
func FuzzLZ4Compat(f *testing.F) {
	f.Add([]byte("abcabcabcabcabcabcabc"), uint16(1))
	f.Add(make([]byte, 100), uint16(700))
	f.Add(testData(1, 5000, true), uint16(13))
	f.Add(bytes.Repeat([]byte("0123456789abcdef"), 40), uint16(102))
	c := new(lz4Compressor)
	var ref lz4.CompressorCCompat
	f.Fuzz(func(t *testing.T, data []byte, repeat uint16) {
		src := data
		if len(data) > 0 && repeat > 1 {
			src = bytes.Repeat(data, int(repeat))
		}
		if len(src) >= lz4U16Limit {
			src = src[:lz4U16Limit-1]
		}
		checkLZ4Compat(t, c, &ref, src)
	})
}

// guardedBuf returns an n-byte slice that ends where an inaccessible page starts,
// so that a load or store past its end faults instead of going unnoticed.
func guardedBuf(t *testing.T, n int) []byte {
	t.Helper()
	page := syscall.Getpagesize()
	size := (n+page-1)/page*page + page
	m, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(m) })
	if err := syscall.Mprotect(m[size-page:], syscall.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	return m[size-page-n : size-page : size-page]
}

// TestLZ4CompatGuarded: the compressor's unchecked loads and stores stay inside
// its input and the lz4Bound bytes of output it is given: both end at a guard page.
func TestLZ4CompatGuarded(t *testing.T) {
	c := new(lz4Compressor)
	var ref lz4.CompressorCCompat
	corpus := lz4Corpus(t)
	for _, n := range []int{1, 12, 13, 14, 20, 100, 4096, 4097, 65535, 64 << 10, lz4U16Limit - 1} {
		for _, name := range []string{"zero", "random", "text", "periods", "mixed", "mixed2"} {
			src := guardedBuf(t, n)
			copy(src, corpus[name])
			out := guardedBuf(t, lz4Bound(n))
			got := c.compress(out[:0], src)
			if &got[0] != &out[0] {
				t.Fatalf("%s, %d bytes: output reallocated", name, n)
			}
			want := make([]byte, lz4.CompressBlockBound(n))
			m, _ := ref.CompressBlock(src, want)
			if !bytes.Equal(got, want[:m]) {
				t.Fatalf("%s, %d bytes: output differs from CompressorCCompat", name, n)
			}
		}
	}
}

// TestAppendBlockLZ4: the writer's compressor gives CompressorCCompat's bytes for
// block-sized input and for input too long for the byU16 table, appended to dst.
func TestAppendBlockLZ4(t *testing.T) {
	c, err := newBlockCompressor(LZ4)
	if err != nil {
		t.Fatal(err)
	}
	var ref lz4.CompressorCCompat
	data := lz4Corpus(t)["text"]
	for _, n := range []int{0, 4096, 64 << 10, lz4U16Limit - 1, lz4U16Limit, 70000} {
		got, err := c.appendBlock([]byte("head"), data[:n])
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, lz4.CompressBlockBound(n))
		m, _ := ref.CompressBlock(data[:n], want)
		if string(got[:4]) != "head" || !bytes.Equal(got[4:], want[:m]) {
			t.Fatalf("%d bytes: appendBlock differs from CompressorCCompat", n)
		}
	}
}
