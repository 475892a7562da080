package lsmt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// smallLayer commits three segments (one zeroed) into an in-memory sealed layer.
func smallLayer(t testing.TB) []byte {
	t.Helper()
	data := bytes.Repeat([]byte{0xaa}, 64*SectorSize)
	src := Source{
		Segments:    segs(v{0, 8, 0}, v{16, 8, 8}, v{40, 4, 0}),
		Files:       []io.ReaderAt{bytes.NewReader(data)},
		VirtualSize: 1 << 20,
	}
	src.Segments[1].Zeroed = true
	var out bytes.Buffer
	if err := Commit(&out, src, CommitOptions{UUID: UUID{1}}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func trailerOf(b []byte) (indexOff, indexSize uint64) {
	t := b[len(b)-HeaderSize:]
	return binary.LittleEndian.Uint64(t[htIndexOffset:]), binary.LittleEndian.Uint64(t[htIndexSize:])
}

func setEntry(b []byte, i int, s Segment) {
	off, _ := trailerOf(b)
	s.Encode(b[off+uint64(i)*SegmentSize:])
}

func openBytes(b []byte) (*Layer, error) { return OpenLayer(bytes.NewReader(b), int64(len(b))) }

func TestOpenLayerRejectsCorruption(t *testing.T) {
	good := smallLayer(t)
	if _, err := openBytes(good); err != nil {
		t.Fatalf("good layer: %v", err)
	}
	idxOff, _ := trailerOf(good)
	limit := idxOff / SectorSize
	tr := len(good) - HeaderSize
	cases := []struct {
		name   string
		mutate func(b []byte) []byte
		want   string
	}{
		{"bad header magic", func(b []byte) []byte { b[0] = 'X'; return b }, "magic0"},
		{"bad trailer magic", func(b []byte) []byte { b[tr+9] ^= 1; return b }, "magic1"},
		{"header is an index file", func(b []byte) []byte { b[htFlags] = FlagHeader; return b }, "header at offset 0"},
		{"trailer not sealed", func(b []byte) []byte { b[tr+htFlags] = FlagDataFile; return b }, "trailer at offset"},
		{"trailer has header bit", func(b []byte) []byte { b[tr+htFlags] = 0x07; return b }, "trailer at offset"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-100] }, "magic"},
		{"tiny", func(b []byte) []byte { return b[:5000] }, "at least"},
		{"index_size too big for file", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[tr+htIndexSize:], 100000)
			return b
		}, "does not fit"},
		{"index_size over limit", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[tr+htIndexSize:], MaxROIndexSize+1)
			return b
		}, "exceeds the limit 1000000"},
		{"index_offset past trailer", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[tr+htIndexOffset:], 1<<40)
			return b
		}, "does not fit"},
		{"entry past index_offset", func(b []byte) []byte { setEntry(b, 2, seg(40, 4, limit-2)); return b }, "data outside"},
		{"entry inside header", func(b []byte) []byte { setEntry(b, 0, seg(0, 8, 4)); return b }, "data outside"},
		{"zeroed entry moffset past index", func(b []byte) []byte {
			s := seg(16, 8, limit+1)
			s.Zeroed = true
			setEntry(b, 1, s)
			return b
		}, "zeroed entry"},
		{"overlapping entries", func(b []byte) []byte { setEntry(b, 1, seg(4, 8, 8)); return b }, "overlaps"},
		{"unsorted entries", func(b []byte) []byte { setEntry(b, 2, seg(1, 1, 8)); return b }, "overlaps or precedes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mutate(append([]byte(nil), good...))
			_, err := openBytes(b)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
			if !strings.Contains(c.name, "truncated") && !strings.Contains(c.name, "tiny") && !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %v does not wrap ErrCorrupt", err)
			}
		})
	}
}

// A ReaderAt that fails every read at or beyond failAt.
type failingReader struct {
	r      io.ReaderAt
	failAt int64
}

var errDisk = errors.New("disk on fire")

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, errDisk
	}
	return f.r.ReadAt(p, off)
}

// Backing read errors are returned; a backing file cut short reads zeros at its end.
func TestReadBackingErrorsAndEOF(t *testing.T) {
	b := smallLayer(t)
	l, err := openBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	// Same index, but data reads fail.
	l.r = failingReader{r: bytes.NewReader(b), failAt: HeaderSize}
	im, err := NewImage([]*Layer{l}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8192)
	if _, err := im.ReadAt(p, 0); !errors.Is(err, errDisk) {
		t.Errorf("read over a failing backing store: %v", err)
	}
	// Holes and zeroed segments need no backing read.
	if n, err := im.ReadAt(p, 8*SectorSize); err != nil || n != len(p) {
		t.Errorf("read of hole+zeroed: %d %v", n, err)
	}
	// Truncated backing data: the missing tail reads as zeros.
	l.r = bytes.NewReader(b[:HeaderSize+4*SectorSize])
	im, _ = NewImage([]*Layer{l}, nil)
	if _, err := im.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{0xaa}, 4*SectorSize), make([]byte, 8192-4*SectorSize)...)
	if !bytes.Equal(p, want) {
		t.Error("truncated backing data not zero-filled")
	}
	// Reads past the end.
	n, err := im.ReadAt(p, im.Size()-100)
	if n != 100 || err != io.EOF {
		t.Errorf("read across the end: %d %v", n, err)
	}
	if n, err := im.ReadAt(p, im.Size()); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d %v", n, err)
	}
	if _, err := im.ReadAt(p, -1); err == nil {
		t.Error("negative offset accepted")
	}
	if _, err := im.WriteAt(p, 0); err == nil || im.Flush() != nil || !im.ReadOnly() {
		t.Error("read-only image accepted a write")
	}
}

func TestOpenWritableRejects(t *testing.T) {
	dir := t.TempDir()
	w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: 1 << 20})
	if _, err := w.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(make([]byte, 100), 0); err == nil {
		t.Error("unaligned write accepted")
	}
	if err := w.Discard(1, 512); err == nil {
		t.Error("unaligned discard accepted")
	}
	w.Close()
	ip := filepath.Join(dir, "l.index")
	orig, _ := os.ReadFile(ip)

	open := func() error {
		data, _ := os.OpenFile(filepath.Join(dir, "l.data"), os.O_RDWR, 0)
		index, _ := os.OpenFile(ip, os.O_RDWR, 0)
		w, err := OpenWritable(data, index)
		if err == nil {
			w.Close()
		} else {
			data.Close()
			index.Close()
		}
		return err
	}
	cases := []struct {
		name   string
		mutate func(b []byte) []byte
		want   string
	}{
		{"entry inside the header", func(b []byte) []byte {
			seg(0, 8, 4).Encode(b[HeaderSize:])
			return b
		}, "outside the data file"},
		{"index file sealed", func(b []byte) []byte { b[htFlags] = FlagHeader | FlagSealed; return b }, "header flags"},
		{"index_offset", func(b []byte) []byte { b[htIndexOffset+1] = 0x20; return b }, "index_offset"},
		{"bad magic", func(b []byte) []byte { b[1] = 0; return b }, "magic0"},
		{"short", func(b []byte) []byte { return b[:100] }, "shorter than its header"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(ip, c.mutate(append([]byte(nil), orig...)), 0o644); err != nil {
				t.Fatal(err)
			}
			err := open()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want mention of %q", err, c.want)
			}
		})
	}
	// Invalid (padding) entries in the log are skipped.
	b := append(append([]byte(nil), orig...), make([]byte, SegmentSize)...)
	InvalidSegment.Encode(b[len(orig):])
	os.WriteFile(ip, b, 0o644)
	if err := open(); err != nil {
		t.Errorf("log with a padding entry: %v", err)
	}
	// An index log with 128,000,001 entries is rejected before anything is read.
	os.WriteFile(ip, orig[:HeaderSize], 0o644)
	if err := os.Truncate(ip, HeaderSize+(MaxIndexSize+1)*SegmentSize); err != nil {
		t.Fatalf("making a sparse 2 GB index file: %v", err)
	}
	if err := open(); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Errorf("oversize index log: %v", err)
	}
}

// A discard far past the disk end is clipped to the virtual size instead of becoming
// billions of 16383-sector entries.
func TestDiscardHugeRange(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		w := newWritableFiles(t, t.TempDir(), "l", CreateOptions{VirtualSize: 1 << 20, Sparse: sparse})
		if _, err := w.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if err := w.Discard(0, 1<<58); err != nil {
			t.Fatal(err)
		}
		got := w.Segments()
		if len(got) != 1 || !got[0].Zeroed || got[0].Length != 2048 {
			t.Errorf("sparse=%v: segments after huge discard: %v", sparse, got)
		}
		if err := w.Discard(1<<30, 1<<20); err != nil || len(w.Segments()) != 1 {
			t.Errorf("sparse=%v: discard past the end: %v %v", sparse, err, w.Segments())
		}
		w.Close()
	}
}
