package lsmt

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const bStack = "../testdata/golden/reference/b_stack"

// Expected values from testdata/golden/reference/README.md.
const (
	vdiskL0   = "7cf80e3811e132e8db9413ce0d6eadcef6d9ba1892f2d7802570bbdda0e1d59a"
	vdiskL01  = "c834941b5c185cb3091a03072c975a8326ad96de36e501d492cbd023233596d7"
	vdiskL012 = "519373c4a04fac76b9462987bd06c57a56f672e8582fb018609be74ec3ffa454"
	shaB2     = "afdf000629c4a6a710ad02c62645ae2ac8b5d38d5bba277b62faebf821a9cb45"
	shaMerged = "88570201521069b7a12ce395d84bad1183d007c096fc6f89f72f9e179d8b06b8"
	uuidL1    = "b1111111-1111-4111-8111-111111111111"
	uuidL2    = "b2222222-2222-4222-8222-222222222222"
)

func openGolden(t testing.TB, name string) *Layer {
	t.Helper()
	f, err := os.Open(filepath.Join(bStack, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLayer(f, st.Size())
	if err != nil {
		t.Fatalf("OpenLayer(%s): %v", name, err)
	}
	return l
}

// openGoldenRW copies b2.rw.* (read-only in testdata) to a temp dir and opens them.
func openGoldenRW(t testing.TB) *Writable {
	t.Helper()
	dir := t.TempDir()
	var files [2]*os.File
	for i, name := range []string{"b2.rw.data", "b2.rw.index"} {
		b, err := os.ReadFile(filepath.Join(bStack, name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if files[i], err = os.OpenFile(p, os.O_RDWR, 0); err != nil {
			t.Fatal(err)
		}
	}
	w, err := OpenWritable(files[0], files[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func mustUUID(t testing.TB, s string) UUID {
	t.Helper()
	u, err := ParseUUID(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// indexText renders a layer like the reference README's *.index.txt files.
func indexText(l *Layer) string {
	var b strings.Builder
	fmt.Fprintf(&b, "vsize %d uuid %s entries %d\n", l.VirtualSize(), l.UUID(), len(l.Segments()))
	for i, s := range l.Segments() {
		z := 0
		if s.Zeroed {
			z = 1
		}
		fmt.Fprintf(&b, "  [%d] offset=%d length=%d moffset=%d zeroed=%d (bytes: off=%d len=%d)\n",
			i, s.Offset, s.Length, s.MOffset, z, s.Offset*SectorSize, uint64(s.Length)*SectorSize)
	}
	return b.String()
}

func TestGoldenIndexText(t *testing.T) {
	for _, name := range []string{"b0.commit", "b1.commit", "b2.commit", "merged.commit"} {
		want, err := os.ReadFile(filepath.Join(bStack, name+".index.txt"))
		if err != nil {
			t.Fatal(err)
		}
		if got := indexText(openGolden(t, name)); got != string(want) {
			t.Errorf("%s index:\n%s\nwant:\n%s", name, got, want)
		}
	}
}

func TestGoldenHeaders(t *testing.T) {
	l := openGolden(t, "b2.commit")
	if h := l.Header(); h.Flags != 0x07 || h.IndexOffset != 0 || h.IndexSize != 0 {
		t.Errorf("b2 header flags 0x%x index %d/%d, want 0x7 0/0", h.Flags, h.IndexOffset, h.IndexSize)
	}
	tr := l.Trailer()
	if tr.Flags != 0x06 || tr.IndexSize != 256 || tr.Version != 1 || tr.SubVersion != 1 {
		t.Errorf("b2 trailer flags 0x%x index_size %d version %d.%d", tr.Flags, tr.IndexSize, tr.Version, tr.SubVersion)
	}
	if got := l.UUID().String(); got != strings.ToUpper(uuidL2) {
		t.Errorf("uuid %s", got)
	}
	if got := l.ParentUUID().String(); got != strings.ToUpper(uuidL1) {
		t.Errorf("parent %s", got)
	}
	if !openGolden(t, "merged.commit").ParentUUID().IsNull() {
		t.Error("merged parent not null")
	}
}

// vdiskSHA streams the whole virtual disk through sha256 in 1 MiB reads.
func vdiskSHA(t *testing.T, r io.ReaderAt, size int64) string {
	t.Helper()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n, err := r.ReadAt(buf, off)
		if err != nil && !(err == io.EOF && off+int64(n) == size) {
			t.Fatalf("ReadAt(%d): %v", off, err)
		}
		h.Write(buf[:n])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestGoldenVirtualDisks(t *testing.T) {
	b0, b1, b2 := openGolden(t, "b0.commit"), openGolden(t, "b1.commit"), openGolden(t, "b2.commit")
	cases := []struct {
		name   string
		lowers []*Layer
		rw     bool
		want   string
	}{
		{"b0", []*Layer{b0}, false, vdiskL0},
		{"b0+b1", []*Layer{b0, b1}, false, vdiskL01},
		{"b0+b1+b2", []*Layer{b0, b1, b2}, false, vdiskL012},
		{"b0+b1+rw(b2)", []*Layer{b0, b1}, true, vdiskL012},
		{"merged", []*Layer{openGolden(t, "merged.commit")}, false, vdiskL012},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var upper *Writable
			if c.rw {
				upper = openGoldenRW(t)
			}
			im, err := NewImage(c.lowers, upper)
			if err != nil {
				t.Fatal(err)
			}
			if im.Size() != 1<<30 {
				t.Fatalf("size %d", im.Size())
			}
			if got := vdiskSHA(t, im, im.Size()); got != c.want {
				t.Errorf("vdisk sha256 %s, want %s", got, c.want)
			}
		})
	}
}

// Flattening b0+b1+rw(b2) into one layer (commit of a whole stack with a writable
// upper) reads back as the reference's three-layer disk.
func TestGoldenFlattenWithUpper(t *testing.T) {
	im, err := NewImage([]*Layer{openGolden(t, "b0.commit"), openGolden(t, "b1.commit")}, openGoldenRW(t))
	if err != nil {
		t.Fatal(err)
	}
	src, err := im.CommitSource()
	if err != nil {
		t.Fatal(err)
	}
	l := commitToLayer(t, filepath.Join(t.TempDir(), "flat"), src, CommitOptions{})
	if l.ParentUUID() != im.Lowers()[0].ParentUUID() {
		t.Errorf("parent %s, want the bottom layer's", l.ParentUUID())
	}
	flat, err := NewImage([]*Layer{l}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := vdiskSHA(t, flat, flat.Size()); got != vdiskL012 {
		t.Errorf("flattened vdisk sha256 %s, want %s", got, vdiskL012)
	}
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// The golden determinism test: committing the reference's RW layer must reproduce its
// commit output byte for byte.
func TestGoldenCommitRW(t *testing.T) {
	w := openGoldenRW(t)
	var out bytes.Buffer
	err := Commit(&out, w.CommitSource(), CommitOptions{UUID: mustUUID(t, uuidL2), ParentUUID: mustUUID(t, uuidL1)})
	if err != nil {
		t.Fatal(err)
	}
	if got := sha(out.Bytes()); got != shaB2 {
		want, _ := os.ReadFile(filepath.Join(bStack, "b2.commit"))
		t.Fatalf("commit sha256 %s (%d bytes), want %s (%d bytes); first difference at %d",
			got, out.Len(), shaB2, len(want), firstDiff(out.Bytes(), want))
	}
}

// overlaybd-merge --compress=false of b0+b1+b2 (null uuid, parent from the bottom).
func TestGoldenMerge(t *testing.T) {
	im, err := NewImage([]*Layer{openGolden(t, "b0.commit"), openGolden(t, "b1.commit"), openGolden(t, "b2.commit")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	src, err := im.CommitSource()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Commit(&out, src, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := sha(out.Bytes()); got != shaMerged {
		want, _ := os.ReadFile(filepath.Join(bStack, "merged.commit"))
		t.Fatalf("merge sha256 %s (%d bytes), want %s (%d bytes); first difference at %d",
			got, out.Len(), shaMerged, len(want), firstDiff(out.Bytes(), want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Replaying the reference's writes (taken from its own index log) through Writable
// reproduces overlaybd's RW data and index files byte for byte.
func TestGoldenWritableFiles(t *testing.T) {
	wantData, err := os.ReadFile(filepath.Join(bStack, "b2.rw.data"))
	if err != nil {
		t.Fatal(err)
	}
	wantIndex, err := os.ReadFile(filepath.Join(bStack, "b2.rw.index"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w := newWritableFiles(t, dir, "l", CreateOptions{
		VirtualSize: 1 << 30,
		UUID:        mustUUID(t, "5BB29EB6-573B-4E5D-80E7-F5EF6E1C1EAA"),
		ParentUUID:  mustUUID(t, uuidL1),
	})
	for i := HeaderSize; i+SegmentSize <= len(wantIndex); i += SegmentSize {
		s := DecodeSegment(wantIndex[i:])
		off, n := int64(s.Offset)*SectorSize, int64(s.Length)*SectorSize
		if s.Zeroed {
			err = w.Discard(off, n)
		} else {
			m := int64(s.MOffset) * SectorSize
			_, err = w.WriteAt(wantData[m:m+n], off)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"data": wantData, "index": wantIndex} {
		got, err := os.ReadFile(filepath.Join(dir, "l."+name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s file (%d bytes) differs from the reference (%d bytes) at byte %d", name, len(got), len(want), firstDiff(got, want))
		}
	}
}
