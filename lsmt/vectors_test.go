package lsmt

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// seg builds a segment from the {offset,length,moffset[,tag]} notation of the reference tests.
func seg(v ...uint64) Segment {
	s := Segment{Offset: v[0], Length: uint32(v[1]), MOffset: v[2]}
	if len(v) > 3 {
		s.Tag = uint8(v[3])
	}
	return s
}

func segs(vs ...[]uint64) []Segment {
	out := make([]Segment, len(vs))
	for i, v := range vs {
		out[i] = seg(v...)
	}
	return out
}

type v = []uint64

func equalSegs(t *testing.T, what string, got, want []Segment) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

func TestLookupVector(t *testing.T) {
	x := NewIndex(segs(v{0, 10, 0}, v{10, 10, 50}, v{100, 10, 20}))
	equalSegs(t, "{5,10}", x.Lookup(5, 10), segs(v{5, 5, 5}, v{10, 5, 50}))
	equalSegs(t, "{16,10}", x.Lookup(16, 10), segs(v{16, 4, 56}))
	equalSegs(t, "{26,10}", x.Lookup(26, 10), nil)
	equalSegs(t, "{6,100}", x.Lookup(6, 100), segs(v{6, 4, 6}, v{10, 10, 50}, v{100, 6, 20}))
}

// Find must agree with sort.Search for both key widths, at node and level boundaries.
func TestIndexFindMatchesBinarySearch(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{0, 1, 15, 16, 17, 255, 256, 257, 4095, 4096, 4097, 70000} {
		for _, wide := range []bool{false, true} {
			ss := benchSegments(max(n, 1))[:n]
			if wide && n > 0 {
				// Move the tail beyond 2^31 sectors to force 64-bit keys.
				for i := n / 2; i < n; i++ {
					ss[i].Offset += 1 << 40
				}
			}
			x := NewIndex(ss)
			if (x.t64 != nil) != (wide && n > 0) {
				t.Fatalf("n=%d wide=%v: wrong key width chosen", n, wide)
			}
			check := func(q uint64) {
				if got, want := x.Find(q), sortSearchFind(ss, q); got != want {
					t.Fatalf("n=%d wide=%v: Find(%d)=%d, want %d", n, wide, q, got, want)
				}
			}
			for _, s := range ss {
				check(s.Offset)
				check(s.End() - 1)
				check(s.End())
			}
			for i := 0; i < 2000; i++ {
				check(r.Uint64N(1 << 42))
			}
			check(0)
			check(MaxOffset)
			check(1<<64 - 1)
		}
	}
}

func TestIndex0InsertVector(t *testing.T) {
	var m segmentMap
	for _, s := range segs(v{0, 20, 0}, v{10, 15, 50}, v{30, 100, 20}, v{5, 10, 3}, v{40, 10, 123}, v{200, 10, 2133}, v{150, 100, 21}) {
		m.Insert(s)
	}
	want := segs(v{0, 5, 0}, v{5, 10, 3}, v{15, 10, 55}, v{30, 10, 20}, v{40, 10, 123}, v{50, 80, 40}, v{150, 100, 21})
	equalSegs(t, "insert", m.All(), want)
	if m.Len() != len(want) {
		t.Errorf("Len %d, want %d", m.Len(), len(want))
	}
}

// The map must behave like a per-sector array under random overwrites.
func TestIndex0MatchesSectorModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	const n = 4000
	type cell struct {
		set    bool
		moff   uint64
		zeroed bool
	}
	model := make([]cell, n)
	var m segmentMap
	for i := 0; i < 3000; i++ {
		l := 1 + r.IntN(200)
		off := r.IntN(n - l)
		s := Segment{Offset: uint64(off), Length: uint32(l), MOffset: uint64(r.IntN(1 << 20)), Zeroed: r.IntN(4) == 0}
		m.Insert(s)
		for j := 0; j < l; j++ {
			c := cell{set: true, moff: s.MOffset + uint64(j), zeroed: s.Zeroed}
			if s.Zeroed {
				c.moff = 0
			}
			model[off+j] = c
		}
	}
	got := make([]cell, n)
	all := m.All()
	for i, s := range all {
		if i > 0 && all[i-1].End() > s.Offset {
			t.Fatalf("overlap: %v %v", all[i-1], s)
		}
		for j := uint64(0); j < uint64(s.Length); j++ {
			c := cell{set: true, moff: s.MOffset + j, zeroed: s.Zeroed}
			if s.Zeroed {
				c.moff = 0
			}
			got[s.Offset+j] = c
		}
	}
	if !reflect.DeepEqual(got, model) {
		t.Fatal("segment map differs from the sector model")
	}
	if m.Len() != len(all) {
		t.Fatalf("Len %d, but %d segments", m.Len(), len(all))
	}
	// Lookup of a sub-range agrees with clipping All.
	for i := 0; i < 200; i++ {
		a := uint64(r.IntN(n))
		b := a + uint64(r.IntN(300))
		var want []Segment
		for _, s := range all {
			if s.End() > a && s.Offset < b {
				want = append(want, clip(s, a, b))
			}
		}
		equalSegs(t, "lookup", m.Lookup(a, b, nil), want)
	}
}

var (
	m0 = segs(v{5, 5, 0}, v{10, 10, 50}, v{100, 10, 20})
	m1 = segs(v{0, 1, 7}, v{2, 4, 5}, v{15, 10, 22}, v{30, 15, 89}, v{87, 50, 32}, v{150, 10, 84})
	m2 = segs(v{1, 3, 134}, v{8, 4, 873}, v{18, 72, 320}, v{100, 100, 4893}, v{1000, 1000, 39823})
	m3 = segs(v{23, 10, 0}, v{65, 10, 50}, v{89, 10, 20}, v{230, 43, 432}, v{1999, 31, 2393})
)

func TestMergeVector(t *testing.T) {
	ro, err := Merge([][]Segment{m1, m2, m3})
	if err != nil {
		t.Fatal(err)
	}
	// Combo: m0 as the writable front; as in the reference its tag is 3 (after the lowers).
	combo, err := mergeTagged([][]Segment{m0, ro}, func(level int, s Segment) uint8 {
		if level == 0 {
			return 3
		}
		return s.Tag
	})
	if err != nil {
		t.Fatal(err)
	}
	equalSegs(t, "combo", combo, segs(v{0, 1, 7, 0}, v{1, 1, 134, 1}, v{2, 3, 5, 0}, v{5, 5, 0, 3}, v{10, 10, 50, 3}, v{20, 5, 27, 0},
		v{25, 5, 327, 1}, v{30, 15, 89, 0}, v{45, 42, 347, 1}, v{87, 13, 32, 0}, v{100, 10, 20, 3}, v{110, 27, 55, 0},
		v{137, 13, 4930, 1}, v{150, 10, 84, 0}, v{160, 40, 4953, 1}, v{230, 43, 432, 2}, v{1000, 1000, 39823, 1}, v{2000, 30, 2394, 2}))

	two, err := Merge([][]Segment{m0, m1})
	if err != nil {
		t.Fatal(err)
	}
	// The reference's tags here come from a combo (m0 = RW, tag 1); ours are top-first positions.
	want := segs(v{0, 1, 7, 1}, v{2, 3, 5, 1}, v{5, 5, 0, 0}, v{10, 10, 50, 0}, v{20, 5, 27, 1}, v{30, 15, 89, 1}, v{87, 13, 32, 1}, v{100, 10, 20, 0}, v{110, 27, 55, 1}, v{150, 10, 84, 1})
	equalSegs(t, "m0+m1", two, want)
}

func TestMergeLimits(t *testing.T) {
	if _, err := Merge(make([][]Segment, MaxLayers+1)); err == nil {
		t.Error("merge of 256 layers accepted")
	}
	if _, err := Merge(make([][]Segment, MaxLayers)); err != nil {
		t.Errorf("merge of 255 empty layers: %v", err)
	}
}

func TestCompressRawIndexVectors(t *testing.T) {
	cases := []struct{ in, want []Segment }{
		{segs(v{5, 5, 0}, v{10, 10, 5}, v{100, 10, 20}), segs(v{5, 15, 0}, v{100, 10, 20})},
		{segs(v{5, 5, 0}, v{10, 10, 5}, v{20, 10, 15}, v{100, 10, 20}), segs(v{5, 25, 0}, v{100, 10, 20})},
		{segs(v{5, 5, 0}, v{10, 10, 5}, v{20, 10, 15, 1}, v{100, 10, 20}), segs(v{5, 15, 0}, v{20, 10, 15, 1}, v{100, 10, 20})},
		{segs(v{5, 5, 0}, v{10, 10, 5, 3}, v{20, 10, 15, 3}, v{30, 10, 20}), segs(v{5, 5, 0}, v{10, 20, 5, 3}, v{30, 10, 20})},
		// Strict <: 8000+8383 = 16383 is not merged, 8000+8382 is.
		{segs(v{0, 8000, 8}, v{8000, 8383, 8008}), segs(v{0, 8000, 8}, v{8000, 8383, 8008})},
		{segs(v{0, 8000, 8}, v{8000, 8382, 8008}), segs(v{0, 16382, 8})},
	}
	for i, c := range cases {
		equalSegs(t, "case "+string(rune('0'+i)), compressRawIndex(append([]Segment(nil), c.in...)), c.want)
	}
}

func TestSegmentEncoding(t *testing.T) {
	var b [16]byte
	InvalidSegment.Encode(b[:])
	if want := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0}; !bytes.Equal(b[:], want) {
		t.Errorf("invalid entry % x, want % x", b, want)
	}
	s := Segment{Offset: 1<<50 - 2, Length: MaxLength, MOffset: MaxMOffset, Zeroed: true, Tag: 0xab}
	s.Encode(b[:])
	if got := DecodeSegment(b[:]); got != s {
		t.Errorf("round trip %v -> %v", s, got)
	}
	// Zeroed entry from b1.commit: offset 131200 length 128 moffset 2072.
	got := DecodeSegment([]byte{0x80, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x18, 0x08, 0, 0, 0, 0, 0x80, 0})
	if want := (Segment{Offset: 131200, Length: 128, MOffset: 2072, Zeroed: true}); got != want {
		t.Errorf("decode %v, want %v", got, want)
	}
}

func TestUUID(t *testing.T) {
	u, err := ParseUUID("b2222222-2222-4222-8222-22222222222a")
	if err != nil {
		t.Fatal(err)
	}
	if u.String() != "B2222222-2222-4222-8222-22222222222A" {
		t.Errorf("String %s", u)
	}
	if u[0] != 0xb2 || u[15] != 0x2a {
		t.Errorf("bytes not in memory order: % x", u[:])
	}
	for _, bad := range []string{"", "b2222222-2222-4222-8222-2222222222", "b2222222-2222-4222-8222-2222222222222", "b2222222x2222-4222-8222-222222222222", "g2222222-2222-4222-8222-222222222222"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) accepted", bad)
		}
	}
	if (UUID{}).String() != "00000000-0000-0000-0000-000000000000" {
		t.Error("null uuid string")
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := HeaderTrailer{Flags: 0x16, IndexOffset: 12345 * 512, IndexSize: 77, VirtualSize: 1 << 30,
		UUID: UUID{1, 2, 3}, ParentUUID: UUID{9}, UserTag: []byte("hello")}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != HeaderSize || b[24] != 0x86 || b[25] != 1 {
		t.Fatalf("size field % x", b[24:28])
	}
	var g HeaderTrailer
	if err := g.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	h.Version, h.SubVersion = 1, 1
	if !reflect.DeepEqual(g, h) {
		t.Errorf("round trip\n got %+v\nwant %+v", g, h)
	}
	if !g.IsSparse() || g.IsHeader() || !g.IsDataFile() || !g.IsSealed() {
		t.Error("flag helpers")
	}
	b[3] = 'X'
	if err := g.UnmarshalBinary(b); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "magic0") {
		t.Errorf("bad magic: %v", err)
	}
	h.UserTag = make([]byte, 257)
	if _, err := h.MarshalBinary(); err == nil {
		t.Error("257-byte user tag accepted")
	}
}

// writeFile writes a test file and returns its path.
func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCommitUserTagAndUUID(t *testing.T) {
	dir := t.TempDir()
	w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: 1 << 20, ParentUUID: UUID{7}})
	defer w.Close()
	if _, err := w.WriteAt(bytes.Repeat([]byte{1}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Commit(&out, w.CommitSource(), CommitOptions{UserTag: make([]byte, 1024)}); err == nil {
		t.Error("1024-byte user tag accepted")
	}
	tag := bytes.Repeat([]byte{'m'}, 256)
	l := commitToLayer(t, filepath.Join(dir, "a"), w.CommitSource(), CommitOptions{UserTag: tag})
	if !bytes.Equal(l.UserTag(), tag) {
		t.Errorf("user tag %q", l.UserTag())
	}
	if !l.UUID().IsNull() {
		t.Errorf("commit without uuid gave %s", l.UUID())
	}
	if l.ParentUUID() != (UUID{7}) {
		t.Errorf("parent %s, want the source's", l.ParentUUID())
	}
	l = commitToLayer(t, filepath.Join(dir, "b"), w.CommitSource(), CommitOptions{UUID: UUID{5}, ParentUUID: UUID{6}})
	if l.UUID() != (UUID{5}) || l.ParentUUID() != (UUID{6}) {
		t.Errorf("uuid %s parent %s", l.UUID(), l.ParentUUID())
	}
	if st, _ := os.Stat(filepath.Join(dir, "b")); (st.Size()-2*HeaderSize-4096)%4096 != 0 {
		t.Errorf("index not padded to 256 entries: file size %d", st.Size())
	}
}

func TestNewImageLimits(t *testing.T) {
	l, err := openBytes(smallLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	many := make([]*Layer, MaxLayers+1)
	for i := range many {
		many[i] = l
	}
	if _, err := NewImage(many, nil); err == nil {
		t.Error("256 lower layers accepted")
	}
	im, err := NewImage(many[:MaxLayers], nil)
	if err != nil {
		t.Fatalf("255 lower layers: %v", err)
	}
	if im.Size() != 1<<20 {
		t.Errorf("size %d", im.Size())
	}
	empty, err := NewImage(nil, nil)
	if err != nil || empty.Size() != 0 {
		t.Errorf("empty image: %v size %d", err, empty.Size())
	}
}
