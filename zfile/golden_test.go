package zfile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"sort"
	"testing"

	"github.com/obd-project/obd/tarwrap"
)

const golden = "../testdata/golden/"

func readGolden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(golden + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// legacyExt4 returns ext4_64 from the gzip tar, in memory.
func legacyExt4(t testing.TB) []byte {
	t.Helper()
	f, err := os.Open(golden + "ext4_64.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("ext4_64 not found: %v", err)
		}
		if h.Name == "ext4_64" {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// decompressSHA streams the whole content of z through sha256 with reads of n bytes.
func decompressSHA(t testing.TB, z *Reader, n int) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(z, 0, z.Size()), make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func openBytes(t testing.TB, b []byte, opts ...OpenOption) *Reader {
	t.Helper()
	z, err := Open(bytes.NewReader(b), int64(len(b)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func TestGoldenLegacyExt4(t *testing.T) {
	b := legacyExt4(t)
	if got := sha(b); got != "c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9" {
		t.Fatalf("ext4_64 sha256 %s", got)
	}
	z := openBytes(t, b, WithName("ext4_64"))
	info := z.Info()
	if !info.Legacy || info.DigestChecked || info.Header.Flags != 0x7ffea4640b43 || info.Trailer == nil {
		t.Fatalf("legacy info wrong: %+v", info)
	}
	if info.Algorithm != LZ4 || info.BlockSize != 4096 || !info.Verify || info.Blocks != 132309 ||
		info.IndexOffset != 4207947 || z.Size() != 541937664 {
		t.Fatalf("layout wrong: %+v", info)
	}
	if got := decompressSHA(t, z, 1<<20); got != "799dbd74cbcfbd7f37611057130b20fda0e1e671280df97cc3a05d73620d5ac7" {
		t.Fatalf("decompressed sha256 %s", got)
	}
	if err := z.Verify(); err != nil {
		t.Fatal(err)
	}
	// The LSMT header magic sits at the start of the decompressed file.
	head := make([]byte, 8)
	if _, err := z.ReadAt(head, 0); err != nil || string(head[:5]) != "LSMT\x00" {
		t.Fatalf("decompressed head %q, %v", head, err)
	}
}

func TestGoldenHelloWorld(t *testing.T) {
	b := readGolden(t, "hello-world-oci/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d")
	payload, n, ok, err := tarwrap.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil || !ok || n != 639491 {
		t.Fatalf("tarwrap.Open: n=%d ok=%v err=%v", n, ok, err)
	}
	z, err := Open(payload, n)
	if err != nil {
		t.Fatal(err)
	}
	info := z.Info()
	if info.Legacy || !info.DigestChecked || info.Header.Flags != 0x1b || info.Trailer == nil || info.Trailer.Flags != 0x16 || info.Blocks != 17463 {
		t.Fatalf("info %+v", info)
	}
	if got := decompressSHA(t, z, 128<<10); got != "39195424aa10572fe002262190877b4306a66be9c62c8f1594141b01dc79c2ea" {
		t.Fatalf("decompressed sha256 %s", got)
	}
	if z.Size() != 71528448 {
		t.Fatalf("size %d", z.Size())
	}
}

const raw4mSHA = "2be3a09a29539a40f565c7247a940d01d05fbf7f9d84a753eefcdf3885ead257"

func TestGoldenCZFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		algo Algorithm
		bs   int
	}{{"raw4m.lz4.zfile", LZ4, 4096}, {"raw4m.zstd-bs8k.zfile", Zstd, 8192}} {
		b := readGolden(t, "reference/c_zfile/"+tc.name)
		z := openBytes(t, b)
		info := z.Info()
		if info.Algorithm != tc.algo || info.BlockSize != tc.bs || !info.Verify || info.Header.Flags != 0x13 ||
			info.Trailer == nil || info.Trailer.Flags != 0x16 || !info.DigestChecked || info.Legacy {
			t.Fatalf("%s: info %+v", tc.name, info)
		}
		for _, n := range []int{4096, 1000, 1 << 20} {
			if got := decompressSHA(t, z, n); got != raw4mSHA {
				t.Fatalf("%s: reads of %d: sha256 %s", tc.name, n, got)
			}
		}
		if err := z.Verify(); err != nil {
			t.Fatal(err)
		}
	}
}

func decompressAll(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if _, err := Decompress(&out, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestGoldenMerged(t *testing.T) {
	got := decompressAll(t, readGolden(t, "reference/b_stack/merged.lz4.zfile"))
	if !bytes.Equal(got, readGolden(t, "reference/b_stack/merged.commit")) {
		t.Fatal("merged.lz4.zfile does not decompress to merged.commit")
	}
}

// TestGoldenTarD0: d0.commit-z-t.tar was committed from a copy of the writable
// layer d0.commit came from; sparse commits pack data by allocation granule, so the
// two LSMT files differ in layout but must hold the same virtual disk.
func TestGoldenTarD0(t *testing.T) {
	b := readGolden(t, "reference/d_ext4/d0.commit-z-t.tar")
	payload, n, ok, err := tarwrap.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil || !ok {
		t.Fatalf("tarwrap.Open: %v %v", ok, err)
	}
	var out bytes.Buffer
	if _, err := Decompress(&out, payload, n); err != nil {
		t.Fatal(err)
	}
	const vdisk = "f140bde5b119ad99f3418b937410e43dc0d12fd34d90047e36342fc062cf369c"
	if got := lsmtVdiskSHA(t, readGolden(t, "reference/d_ext4/d0.commit")); got != vdisk {
		t.Fatalf("d0.commit vdisk sha256 %s (test helper broken)", got)
	}
	if got := lsmtVdiskSHA(t, out.Bytes()); got != vdisk {
		t.Fatalf("d0.commit-z-t.tar vdisk sha256 %s, want %s", got, vdisk)
	}
}

// lsmtVdiskSHA renders the virtual disk of one sealed LSMT layer (docs/overlaybd-format.md §3) and
// returns its sha256: a minimal independent reader, enough for golden checks.
func lsmtVdiskSHA(t testing.TB, b []byte) string {
	t.Helper()
	le := binary.LittleEndian
	tr := b[len(b)-4096:]
	if string(tr[:4]) != "LSMT" {
		t.Fatal("no LSMT trailer")
	}
	ioff, isize, vsize := le.Uint64(tr[32:]), le.Uint64(tr[40:]), int64(le.Uint64(tr[48:]))
	type ext struct {
		off, n, moff int64
		zero         bool
	}
	var exts []ext
	for i := uint64(0); i < isize; i++ {
		w0, w1 := le.Uint64(b[ioff+16*i:]), le.Uint64(b[ioff+16*i+8:])
		off := int64(w0 & (1<<50 - 1))
		if off == 1<<50-1 {
			continue
		}
		exts = append(exts, ext{off * 512, int64(w0>>50) * 512, int64(w1&(1<<55-1)) * 512, w1>>55&1 == 1})
	}
	sort.Slice(exts, func(i, j int) bool { return exts[i].off < exts[j].off })
	h := sha256.New()
	zeros := make([]byte, 1<<20)
	pos := int64(0)
	writeZeros := func(n int64) {
		for n > 0 {
			k := min(n, int64(len(zeros)))
			h.Write(zeros[:k])
			n -= k
		}
	}
	for _, e := range exts {
		if e.off < pos {
			t.Fatalf("overlapping extents at %d", e.off)
		}
		writeZeros(e.off - pos)
		if e.zero {
			writeZeros(e.n)
		} else {
			h.Write(b[e.moff : e.moff+e.n])
		}
		pos = e.off + e.n
	}
	writeZeros(vsize - pos)
	return hex.EncodeToString(h.Sum(nil))
}

// TestGoldenRecordsReencode decodes every current-format header and trailer and
// re-encodes it: our layout and digest must reproduce the reference bytes exactly.
func TestGoldenRecordsReencode(t *testing.T) {
	hello := readGolden(t, "hello-world-oci/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d")[1536 : 1536+639491]
	d0 := readGolden(t, "reference/d_ext4/d0.commit-z-t.tar")[1536 : 1536+330144]
	files := map[string][]byte{
		"hello": hello, "d0": d0,
		"raw4m.lz4":  readGolden(t, "reference/c_zfile/raw4m.lz4.zfile"),
		"raw4m.zstd": readGolden(t, "reference/c_zfile/raw4m.zstd-bs8k.zfile"),
		"merged":     readGolden(t, "reference/b_stack/merged.lz4.zfile"),
	}
	for name, b := range files {
		for _, off := range []int{0, len(b) - HeaderSize} {
			raw := b[off : off+HeaderSize]
			rec, ok := decodeRecord(raw)
			if !ok {
				t.Fatalf("%s@%d: no magic", name, off)
			}
			if got := rec.encode(); !bytes.Equal(got, raw) {
				t.Fatalf("%s@%d: re-encoded record differs", name, off)
			}
		}
	}
}

// TestGoldenRecompressIdentical: our LZ4 writer produces the reference's bytes.
// overlaybd-zfile and overlaybd-merge keep the 0x13 header (NoHeaderOverwrite);
// overlaybd-commit -z -t rewrites it (0x1B) through the tar wrapper.
func TestGoldenRecompressIdentical(t *testing.T) {
	for _, name := range []string{"reference/c_zfile/raw4m.lz4.zfile", "reference/b_stack/merged.lz4.zfile"} {
		ref := readGolden(t, name)
		src := decompressAll(t, ref)
		for _, workers := range []int{1, 3} {
			var out bytes.Buffer
			if _, err := Compress(&out, bytes.NewReader(src), Options{NoHeaderOverwrite: true, Workers: workers}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), ref) {
				t.Fatalf("%s (workers %d): recompressed file differs from the reference (%d vs %d bytes)", name, workers, out.Len(), len(ref))
			}
		}
	}
	ref := readGolden(t, "reference/d_ext4/d0.commit-z-t.tar")
	src := decompressAll(t, ref[tarwrap.HeaderSize:tarwrap.HeaderSize+330144])
	var m memFile
	sw, err := tarwrap.NewStreamWriter(&m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compress(sw, bytes.NewReader(src), Options{}); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.b, ref) {
		t.Fatalf("commit -z -t equivalent differs from d0.commit-z-t.tar (%d vs %d bytes)", len(m.b), len(ref))
	}
}

// memFile is an in-memory io.Writer + io.WriterAt.
type memFile struct{ b []byte }

func (m *memFile) Write(p []byte) (int, error) { m.b = append(m.b, p...); return len(p), nil }
func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if need := off + int64(len(p)); need > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, need-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}
