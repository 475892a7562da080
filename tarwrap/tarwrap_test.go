package tarwrap

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/obd-project/obd/internal/blobio"
)

const (
	helloBlob = "../testdata/golden/hello-world-oci/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d"
	d0Tar     = "../testdata/golden/reference/d_ext4/d0.commit-z-t.tar"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHeaderMatchesGolden compares our header bytes with the reference's for the same
// payload size, and the trailer layout.
func TestHeaderMatchesGolden(t *testing.T) {
	for _, tc := range []struct {
		file        string
		payloadSize int64
	}{{helloBlob, 639491}, {d0Tar, 330144}} {
		b := readFile(t, tc.file)
		if got := Header(tc.payloadSize); !bytes.Equal(got, b[:HeaderSize]) {
			for i := range got {
				if got[i] != b[i] {
					t.Fatalf("%s: header differs at byte %d: got %#x, want %#x", tc.file, i, got[i], b[i])
				}
			}
		}
		if got := WrappedSize(tc.payloadSize); got != int64(len(b)) {
			t.Fatalf("%s: WrappedSize = %d, want %d", tc.file, got, len(b))
		}
		if !bytes.Equal(b[HeaderSize+tc.payloadSize:], Trailer(tc.payloadSize)) {
			t.Fatalf("%s: trailer is not zero padding + 2 zero blocks", tc.file)
		}
	}
}

func TestOpenGolden(t *testing.T) {
	for _, tc := range []struct {
		file        string
		payloadSize int64
	}{{helloBlob, 639491}, {d0Tar, 330144}} {
		b := readFile(t, tc.file)
		p, n, ok, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil || !ok {
			t.Fatalf("%s: Open: ok=%v err=%v", tc.file, ok, err)
		}
		if n != tc.payloadSize {
			t.Fatalf("%s: payload size %d, want %d", tc.file, n, tc.payloadSize)
		}
		head := make([]byte, 8)
		if _, err := p.ReadAt(head, 0); err != nil || string(head[:5]) != "ZFile" {
			t.Fatalf("%s: payload starts with %q (%v), want ZFile", tc.file, head, err)
		}
		// The payload ends exactly at its size: a read past it is short.
		tail := make([]byte, 16)
		if k, err := p.ReadAt(tail, n-8); k != 8 || err != io.EOF {
			t.Fatalf("%s: read across payload end: %d, %v", tc.file, k, err)
		}
	}
}

func TestRawIsNotWrapped(t *testing.T) {
	zf := readFile(t, "../testdata/golden/reference/c_zfile/raw4m.zstd-bs8k.zfile")[:4096]
	for name, b := range map[string][]byte{"zfile": zf, "empty": nil, "short": []byte("ustar")} {
		_, _, ok, err := Open(bytes.NewReader(b), int64(len(b)))
		if ok || err != nil {
			t.Fatalf("%s: ok=%v err=%v, want raw", name, ok, err)
		}
	}
}

func gnuTar(t *testing.T, payload []byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: "layer", Mode: 0o644, Size: int64(len(payload)), Format: tar.FormatGNU}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	tw.Write(payload)
	tw.Close()
	return buf.Bytes()
}

func TestGNUIsRaw(t *testing.T) {
	b := gnuTar(t, []byte("hello"))
	if string(b[257:265]) != "ustar  \x00" {
		t.Fatalf("not a GNU header: %q", b[257:265])
	}
	_, _, ok, err := Open(bytes.NewReader(b), int64(len(b)))
	if ok || err != nil {
		t.Fatalf("GNU tar: ok=%v err=%v, want raw", ok, err)
	}
}

// A plain ustar tar (as Go's archive/tar writes for the ACI baselayer) has its
// payload at 512 with the header's size.
func TestPlainUstar(t *testing.T) {
	payload := bytes.Repeat([]byte("overlaybd"), 1000)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "ext4_64", Mode: 0o644, Size: int64(len(payload)), Format: tar.FormatUSTAR})
	tw.Write(payload)
	tw.Close()
	b := buf.Bytes()
	pl, err := OpenPayload(bytes.NewReader(b), int64(len(b)))
	if err != nil || pl == nil {
		t.Fatalf("OpenPayload: %v, %v", pl, err)
	}
	if pl.Offset() != 512 || pl.Size() != int64(len(payload)) {
		t.Fatalf("offset %d size %d, want 512 %d", pl.Offset(), pl.Size(), len(payload))
	}
	got, _ := io.ReadAll(pl)
	if !bytes.Equal(got, payload) {
		t.Fatal("payload mismatch")
	}
}

// Go's archive/tar PAX output (size in a pax record) is read like the reference's.
func TestGoPaxTar(t *testing.T) {
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "x", Mode: 0o644, Size: int64(len(payload)), Format: tar.FormatPAX,
		PAXRecords: map[string]string{"comment": "hi"}})
	tw.Write(payload)
	tw.Close()
	b := buf.Bytes()
	p, n, ok, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil || !ok || n != int64(len(payload)) {
		t.Fatalf("Open: n=%d ok=%v err=%v", n, ok, err)
	}
	got := make([]byte, n)
	if _, err := p.ReadAt(got, 0); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("payload mismatch: %v", err)
	}
}

func TestWriterRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 513, 99999, 1 << 20} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i>>3) ^ byte(i)
		}
		var buf bytes.Buffer
		w, err := NewWriter(&buf, int64(n))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(payload)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		if int64(len(b)) != WrappedSize(int64(n)) || len(b)%512 != 0 {
			t.Fatalf("n=%d: wrapped size %d", n, len(b))
		}
		// Standard tar readers see one regular file with the payload.
		tr := tar.NewReader(bytes.NewReader(b))
		hdr, err := tr.Next()
		if err != nil || hdr.Name != "overlaybd.commit" || hdr.Size != int64(n) || hdr.Uname != "root" || hdr.Mode != 0o100644 {
			t.Fatalf("n=%d: archive/tar header %+v, %v", n, hdr, err)
		}
		got, _ := io.ReadAll(tr)
		if !bytes.Equal(got, payload) {
			t.Fatalf("n=%d: archive/tar payload mismatch", n)
		}
		if _, err := tr.Next(); err != io.EOF {
			t.Fatalf("n=%d: want one entry, got %v", n, err)
		}
		p, size, ok, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil || !ok || size != int64(n) {
			t.Fatalf("n=%d: Open: %d %v %v", n, size, ok, err)
		}
		got = make([]byte, n)
		if _, err := p.ReadAt(got, 0); n > 0 && err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("n=%d: payload mismatch", n)
		}
	}
}

func TestWriterSizeMismatch(t *testing.T) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, 10)
	if _, err := w.Write(make([]byte, 11)); err == nil {
		t.Fatal("overlong write accepted")
	}
	w.Write(make([]byte, 5))
	if err := w.Close(); err == nil {
		t.Fatal("short payload accepted")
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

func TestStreamWriterEqualsKnownSize(t *testing.T) {
	payload := bytes.Repeat([]byte{1, 2, 3, 4, 5}, 12345)
	var m memFile
	sw, err := NewStreamWriter(&m)
	if err != nil {
		t.Fatal(err)
	}
	sw.Write(payload[:100])
	sw.Write(payload[100:])
	if _, err := sw.WriteAt([]byte{9, 9}, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := sw.WriteAt([]byte{9}, int64(len(payload))); err == nil {
		t.Fatal("WriteAt past the payload accepted")
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	payload[10], payload[11] = 9, 9
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, int64(len(payload)))
	w.Write(payload)
	w.Close()
	if !bytes.Equal(m.b, buf.Bytes()) {
		t.Fatal("stream writer output differs from known-size writer output")
	}
}

func TestGoldenRewrapIdentical(t *testing.T) {
	b := readFile(t, d0Tar)
	p, n, _, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, n)
	io.Copy(w, io.NewSectionReader(p, 0, n))
	w.Close()
	sum := sha256.Sum256(buf.Bytes())
	if got := hex.EncodeToString(sum[:]); got != "9570e740416df7a142af41426bd26eadeea81ba827cd796f80da9287a68844d4" {
		t.Fatalf("rewrapped d0.commit-z-t.tar sha256 %s", got)
	}
}

func TestMalformed(t *testing.T) {
	good := append(Header(1000), make([]byte, 1000)...)
	good = append(good, Trailer(1000)...)
	fix := func(h []byte) { // recompute the checksum of the header block h
		copy(h[offChksum:offChksum+8], "        ")
		octal(h[offChksum:offChksum+8], checksum(h))
	}
	cases := map[string]func(b []byte) []byte{
		"payload past end": func(b []byte) []byte { return b[:HeaderSize+999] },
		"pax size past end": func(b []byte) []byte {
			rec := paxRecord("size", "99999999")
			copy(b[512:1024], make([]byte, 512))
			copy(b[512:], rec)
			octalNoNul(b[offSize:offSize+12], int64(len(rec)))
			fix(b[:512])
			return b
		},
		"bad pax record":      func(b []byte) []byte { b[512] = 'z'; return b },
		"bad second checksum": func(b []byte) []byte { b[1024+10] ^= 1; return b },
		"big pax": func(b []byte) []byte {
			octalNoNul(b[offSize:offSize+12], 600)
			fix(b[:512])
			return b
		},
		"directory": func(b []byte) []byte {
			h := b[1024:1536]
			h[offTypeflag] = '5'
			fix(h)
			return b[1024:]
		},
		"truncated headers": func(b []byte) []byte { return b[:1024] },
	}
	for name, mutate := range cases {
		b := mutate(append([]byte(nil), good...))
		_, _, ok, err := Open(bytes.NewReader(b), int64(len(b)))
		if err == nil || ok || !errors.Is(err, ErrFormat) {
			t.Errorf("%s: ok=%v err=%v, want ErrFormat", name, ok, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// A bad first checksum means "not a wrapper", as in the reference.
	b := append([]byte(nil), good...)
	b[0] ^= 1
	if _, _, ok, err := Open(bytes.NewReader(b), int64(len(b))); ok || err != nil {
		t.Fatalf("bad first checksum: ok=%v err=%v, want raw", ok, err)
	}
}

func TestSignedChecksumAccepted(t *testing.T) {
	b := append(Header(10), make([]byte, 10+2048)...)
	h := b[1024:1536]
	h[offGname+10] = 0xff // a high byte makes signed and unsigned sums differ
	var signed int64
	for i, c := range h {
		if i >= offChksum && i < offChksum+8 {
			c = ' '
		}
		signed += int64(int8(c))
	}
	octal(h[offChksum:offChksum+8], signed)
	if !checksumOK(h) {
		t.Fatal("signed checksum rejected")
	}
	if _, n, ok, err := Open(bytes.NewReader(b), int64(len(b))); !ok || err != nil || n != 10 {
		t.Fatalf("ok=%v err=%v n=%d", ok, err, n)
	}
}

type evictRecorder struct {
	*bytes.Reader
	evicted [][2]int64
}

func (e *evictRecorder) Evict(off, n int64) error {
	e.evicted = append(e.evicted, [2]int64{off, n})
	return nil
}

func TestEvictForwarded(t *testing.T) {
	b := append(Header(100), make([]byte, 100+2048)...)
	er := &evictRecorder{Reader: bytes.NewReader(b)}
	p, _, _, err := Open(er, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	ev, ok := p.(interface{ Evict(off, n int64) error })
	if !ok {
		t.Fatal("payload does not forward Evict")
	}
	ev.Evict(10, 20)
	if len(er.evicted) != 1 || er.evicted[0] != [2]int64{HeaderSize + 10, 20} {
		t.Fatalf("evicted %v", er.evicted)
	}
	// One payload type: over a plain reader it says a re-read cannot help.
	p2, _, _, _ := Open(bytes.NewReader(b), int64(len(b)))
	if err := p2.(blobio.Evicter).Evict(10, 20); !errors.Is(err, blobio.ErrNotEvictable) {
		t.Fatalf("payload of a plain reader: Evict = %v, want blobio.ErrNotEvictable", err)
	}
}

func TestPaxRecordLength(t *testing.T) {
	for _, v := range []int64{0, 9, 639491, 1 << 40, 99999} {
		rec := paxRecord("size", strconv.FormatInt(v, 10))
		n, err := parsePaxSize([]byte(rec))
		if err != nil || n != v {
			t.Fatalf("%q: %d %v", rec, n, err)
		}
	}
	// Records whose length crosses a power of ten must still start with their own length.
	for l := 0; l < 200; l++ {
		rec := paxRecord("k", string(bytes.Repeat([]byte("v"), l)))
		if want := strconv.Itoa(len(rec)) + " "; rec[:len(want)] != want {
			t.Fatalf("record %q does not start with its length %d", rec, len(rec))
		}
	}
}

func FuzzTarOpen(f *testing.F) {
	golden, err := os.ReadFile(d0Tar)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(golden[:HeaderSize+64])
	f.Add(append(Header(5), []byte("hello")...))
	f.Add(gnuTarF(f))
	f.Add(make([]byte, 512))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, n, ok, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil || !ok {
			if p != nil || ok {
				t.Fatal("payload returned with error or not ok")
			}
			return
		}
		if n < 0 || n > int64(len(b)) {
			t.Fatalf("payload size %d outside a %d-byte file", n, len(b))
		}
		buf := make([]byte, n)
		if k, err := p.ReadAt(buf, 0); int64(k) != n && err != io.EOF {
			t.Fatalf("read %d of %d: %v", k, n, err)
		}
	})
}

func gnuTarF(f *testing.F) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "a", Size: 3, Format: tar.FormatGNU})
	tw.Write([]byte("abc"))
	tw.Close()
	return buf.Bytes()
}
