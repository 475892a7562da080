package lsmt

import (
	"bufio"
	"fmt"
	"io"
)

// Source is what Commit packs into a sealed layer: sorted, non-overlapping segments
// whose Tag selects the backing file in Files.
type Source struct {
	Segments    []Segment
	Files       []io.ReaderAt
	VirtualSize uint64 // bytes
	ParentUUID  UUID   // used when CommitOptions.ParentUUID is null
}

// CommitOptions are overlaybd-commit's --uuid, --parent-uuid and -m.
type CommitOptions struct {
	UUID       UUID   // null: the output has the null uuid (commit does not keep the source's)
	ParentUUID UUID   // null: the source's parent
	UserTag    []byte // at most MaxUserTagSize bytes
}

// CommitSource describes the writable layer for Commit.
func (w *Writable) CommitSource() Source {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return Source{Segments: w.segs.All(), Files: []io.ReaderAt{w.data}, VirtualSize: w.vsize, ParentUUID: w.header.ParentUUID}
}

// Commit writes src as a sealed layer to w, strictly sequentially (so w may be a
// compressor or tar writer), byte-identical to overlaybd-commit / overlaybd-merge:
// header (flags 0x07), the data of each non-zeroed segment packed from sector 8 in
// index order, the index with adjacent compatible entries combined (compress_raw_index)
// and padded to a multiple of 256 entries, trailer (flags 0x06). Zeroed segments are
// kept without data; data is never turned into zeroed segments. Source tags are kept
// in the written entries, as the reference does (readers ignore them).
func Commit(w io.Writer, src Source, opts CommitOptions) error {
	if len(opts.UserTag) > MaxUserTagSize {
		return fmt.Errorf("lsmt: user tag is %d bytes, at most %d allowed", len(opts.UserTag), MaxUserTagSize)
	}
	h := HeaderTrailer{Flags: flagsSealedHeader, VirtualSize: src.VirtualSize, UUID: opts.UUID, ParentUUID: opts.ParentUUID, UserTag: opts.UserTag}
	if h.ParentUUID.IsNull() {
		h.ParentUUID = src.ParentUUID
	}
	hb, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, commitCopySize)
	if _, err := bw.Write(hb); err != nil {
		return err
	}
	out := make([]Segment, 0, len(src.Segments))
	buf := make([]byte, commitCopySize)
	moff := uint64(HeaderSectors)
	for _, s := range src.Segments {
		if !s.Valid() || s.Length == 0 {
			continue
		}
		if s.Zeroed {
			s.MOffset = moff
			out = append(out, s)
			continue
		}
		if int(s.Tag) >= len(src.Files) {
			return fmt.Errorf("lsmt: commit: segment %v has tag %d but there are %d source files", s, s.Tag, len(src.Files))
		}
		r := src.Files[s.Tag]
		from := int64(s.MOffset) * SectorSize
		for left := int64(s.Length) * SectorSize; left > 0; {
			n := min(left, int64(len(buf)))
			if err := readBacking(r, buf[:n], from); err != nil {
				return err
			}
			if _, err := bw.Write(buf[:n]); err != nil {
				return err
			}
			from += n
			left -= n
		}
		s.MOffset = moff
		moff += uint64(s.Length)
		out = append(out, s)
	}
	out = compressRawIndex(out)
	for len(out)%commitIndexPad != 0 {
		out = append(out, InvalidSegment)
	}
	var eb [SegmentSize]byte
	for _, s := range out {
		s.Encode(eb[:])
		if _, err := bw.Write(eb[:]); err != nil {
			return err
		}
	}
	t := h
	t.Flags = flagsSealedTrailer
	t.IndexOffset = moff * SectorSize
	t.IndexSize = uint64(len(out))
	tb, _ := t.MarshalBinary()
	if _, err := bw.Write(tb); err != nil {
		return err
	}
	return bw.Flush()
}

// compressRawIndex combines neighbours that continue each other in both the virtual
// and the backing space, with the same zeroed flag and tag, while the combined length
// stays strictly below MaxLength (the reference's compress_raw_index). It works in place.
func compressRawIndex(segs []Segment) []Segment {
	if len(segs) == 0 {
		return segs
	}
	j := 0
	for _, s := range segs[1:] {
		p := &segs[j]
		if p.End() == s.Offset && p.MEnd() == s.MOffset && p.Zeroed == s.Zeroed && p.Tag == s.Tag &&
			uint64(p.Length)+uint64(s.Length) < MaxLength {
			p.Length += s.Length
			continue
		}
		j++
		segs[j] = s
	}
	return segs[:j+1]
}
