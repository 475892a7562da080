package lsmt

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzOpenLayer(f *testing.F) {
	// Seeds stay small: the fuzzer slows to a crawl on inputs of hundreds of KiB
	// (minimizing them dominates), so the golden layers are not used here; their
	// parsing is covered by the golden tests.
	small := smallLayer(f)
	f.Add(small)
	f.Add(small[:len(small)-1])
	f.Add(make([]byte, 2*HeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		// The warp variant parses the same bytes with looser rules; it must not panic
		// either, and reads resolve through its own index.
		if wl, err := OpenWarpLayer(bytes.NewReader(b), int64(len(b)), bytes.NewReader(b)); err == nil {
			p := make([]byte, 4096)
			for i, s := range wl.Segments() {
				if i == 8 {
					break
				}
				// Tag-0 data lies in the file (checked at open); a target (here the
				// same bytes) may be shorter than a tag-1 entry says: an error then.
				q := p[:min(len(p), int(s.Length)*SectorSize)] // this segment only
				if _, err := wl.ReaderAt().ReadAt(q, int64(s.Offset)*SectorSize); err != nil && (s.Tag == WarpTagFile || s.Zeroed) {
					t.Fatalf("warp ReadAt %v: %v", s, err)
				}
			}
		}
		l, err := OpenLayer(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		ss := l.Segments()
		tr := l.Trailer()
		if uint64(len(ss)) > tr.IndexSize || tr.IndexSize*SegmentSize > uint64(len(b)) {
			t.Fatalf("%d segments from index_size %d in a %d-byte file", len(ss), tr.IndexSize, len(b))
		}
		for i, s := range ss {
			if i > 0 && ss[i-1].End() > s.Offset {
				t.Fatalf("accepted overlapping entries %v %v", ss[i-1], s)
			}
			if !s.Zeroed && s.MEnd()*SectorSize > tr.IndexOffset {
				t.Fatalf("accepted entry %v past index_offset %d", s, tr.IndexOffset)
			}
		}
		// Reading the view must not panic; a bounded window around each segment.
		im, err := NewImage([]*Layer{l}, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 4096)
		for i, s := range ss {
			if i == 8 {
				break
			}
			// The backing store is in memory: only io.EOF (past the disk end) may come back.
			if _, err := im.ReadAt(p, max(int64(s.Offset)*SectorSize-100, 0)); err != nil && err != io.EOF {
				t.Fatalf("ReadAt segment %v: %v", s, err)
			}
		}
	})
}

// FuzzReplayIndex feeds arbitrary writable index files (header + log) to the replay.
func FuzzReplayIndex(f *testing.F) {
	b, err := os.ReadFile(filepath.Join(bStack, "b2.rw.index"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, int64(82432))
	f.Add(b[:len(b)-5], int64(82432))
	f.Add(b[:HeaderSize], int64(4096))
	f.Fuzz(func(t *testing.T, b []byte, dataSize int64) {
		if dataSize < 0 {
			dataSize = -dataSize
		}
		var m segmentMap
		_, n, err := loadIndexLog(bytes.NewReader(b), int64(len(b)), dataSize, &m, nil)
		if err != nil {
			return
		}
		if n != (int64(len(b))-HeaderSize)/SegmentSize {
			t.Fatalf("%d records from %d bytes", n, len(b))
		}
		all := m.All()
		if len(all) != m.Len() || int64(len(all)) > 2*n+1 {
			t.Fatalf("%d segments (Len %d) from %d records", len(all), m.Len(), n)
		}
		for i, s := range all {
			if s.Length == 0 || (i > 0 && all[i-1].End() > s.Offset) {
				t.Fatalf("bad map: %v after %v", s, all[max(i-1, 0)])
			}
			if !s.Zeroed && s.MEnd() > uint64(dataSize)/SectorSize {
				t.Fatalf("entry %v past the data file (%d bytes)", s, dataSize)
			}
		}
	})
}

func FuzzSegment(f *testing.F) {
	f.Add(make([]byte, 16))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x80, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x18, 0x08, 0, 0, 0, 0, 0x80, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < SegmentSize {
			return
		}
		s := DecodeSegment(b)
		var e [SegmentSize]byte
		s.Encode(e[:])
		if !bytes.Equal(e[:], b[:SegmentSize]) {
			t.Fatalf("% x -> %v -> % x", b[:SegmentSize], s, e)
		}
		if s.Offset > MaxOffset || s.Length > MaxLength || s.MOffset > MaxMOffset {
			t.Fatalf("decoded out-of-range fields %v", s)
		}
	})
}

func FuzzParseUUID(f *testing.F) {
	f.Add("b2222222-2222-4222-8222-222222222222")
	f.Add("00000000-0000-0000-0000-000000000000")
	f.Add("5BB29EB6-573B-4E5D-80E7-F5EF6E1C1EAA")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUUID(s)
		if err != nil {
			return
		}
		if got := u.String(); !strings.EqualFold(got, s) {
			t.Fatalf("ParseUUID(%q).String() = %q", s, got)
		}
		if v, err := ParseUUID(u.String()); err != nil || v != u {
			t.Fatalf("round trip of %q: %v %v", s, v, err)
		}
	})
}
