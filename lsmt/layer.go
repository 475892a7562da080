package lsmt

import (
	"fmt"
	"io"
)

// Layer is a sealed, read-only LSMT layer (the blob commit produces, or a close_seal'd
// data file). Its index is loaded and validated at open; data is read on demand.
type Layer struct {
	r       io.ReaderAt
	size    int64
	header  HeaderTrailer
	trailer HeaderTrailer
	segs    []Segment // valid entries, sorted (tag 0, or the file selector of a warp layer)
	view    []Segment // what the layer contributes to a stack, read through r
}

// OpenLayer opens the sealed layer of the given size held by r, validating it exactly
// as the reference do_load_index does (trailer mode). Reads are bounded by size, so a
// forged index_size cannot make it allocate more than the file holds.
func OpenLayer(r io.ReaderAt, size int64) (*Layer, error) {
	l, err := openSealed(r, size)
	if err != nil {
		return nil, err
	}
	for i := range l.segs {
		l.segs[i].Tag = 0 // "should be 0"; compaction of a stack leaves source tags behind
	}
	if err := checkSealedIndex(l.segs, l.trailer.IndexOffset, int64(l.trailer.IndexOffset), true); err != nil {
		return nil, err
	}
	l.view = l.segs
	return l, nil
}

// openSealed validates header, trailer and index bounds (docs/overlaybd-format.md
// §3.4 steps 1-5) and returns the layer with its valid entries, tags as stored.
func openSealed(r io.ReaderAt, size int64) (*Layer, error) {
	l := &Layer{r: r, size: size}
	if size < 2*HeaderSize {
		return nil, corruptf("sealed layer: file is %d bytes, need at least %d for header and trailer", size, 2*HeaderSize)
	}
	if err := readHeader(r, 0, &l.header); err != nil {
		return nil, err
	}
	if !l.header.IsHeader() || !l.header.IsDataFile() {
		return nil, corruptf("header at offset 0: flags 0x%x, want header|data-file bits 0x%x set", l.header.Flags, FlagHeader|FlagDataFile)
	}
	trailerOff := size - HeaderSize
	if err := readHeader(r, trailerOff, &l.trailer); err != nil {
		return nil, err
	}
	t := &l.trailer
	if t.IsHeader() || !t.IsDataFile() || !t.IsSealed() {
		return nil, corruptf("trailer at offset %d: flags 0x%x, want data-file|sealed (0x%x) without header bit", trailerOff, t.Flags, flagsSealedTrailer)
	}
	if t.IndexSize > MaxROIndexSize {
		return nil, corruptf("trailer at offset %d: index_size %d exceeds the limit %d", trailerOff, t.IndexSize, MaxROIndexSize)
	}
	if t.IndexOffset > uint64(trailerOff) || t.IndexSize*SegmentSize > uint64(trailerOff)-t.IndexOffset {
		return nil, corruptf("trailer at offset %d: index of %d entries at offset %d does not fit before the trailer", trailerOff, t.IndexSize, t.IndexOffset)
	}
	segs, err := readIndex(r, int64(t.IndexOffset), int64(t.IndexSize))
	if err != nil {
		return nil, err
	}
	l.segs = segs
	return l, nil
}

func readHeader(r io.ReaderAt, off int64, h *HeaderTrailer) error {
	b := make([]byte, HeaderSize)
	if _, err := r.ReadAt(b, off); err != nil {
		return fmt.Errorf("lsmt: reading header/trailer at offset %d: %w", off, err)
	}
	if err := h.UnmarshalBinary(b); err != nil {
		return inContext(err, "header/trailer at offset %d", off)
	}
	return nil
}

// readIndex reads n entries at off, dropping invalid ones.
func readIndex(r io.ReaderAt, off, n int64) ([]Segment, error) {
	segs := make([]Segment, 0, n)
	buf := make([]byte, min(n*SegmentSize, 64<<10))
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(buf))/SegmentSize)
		chunk := buf[:k*SegmentSize]
		if _, err := r.ReadAt(chunk, off+done*SegmentSize); err != nil {
			return nil, fmt.Errorf("lsmt: reading index entries at offset %d: %w", off+done*SegmentSize, err)
		}
		for i := 0; i < len(chunk); i += SegmentSize {
			s := DecodeSegment(chunk[i:])
			if !s.Valid() {
				continue
			}
			segs = append(segs, s)
		}
		done += k
	}
	return segs, nil
}

// checkSealedIndex applies steps 6-7 of the reference validation: entries strictly
// ordered and non-overlapping, data inside [header end, index_offset).
func checkSealedIndex(segs []Segment, indexOffset uint64, at int64, checkData bool) error {
	limit := indexOffset / SectorSize
	for i, s := range segs {
		if i > 0 && segs[i-1].End() > s.Offset {
			return corruptf("index at offset %d: entry %d %v overlaps or precedes entry %d %v", at, i, s, i-1, segs[i-1])
		}
		if !checkData {
			continue
		}
		if s.Zeroed {
			if s.MOffset < HeaderSectors || s.MOffset > limit {
				return corruptf("index at offset %d: zeroed entry %d %v: moffset outside [%d, %d]", at, i, s, HeaderSectors, limit)
			}
		} else if s.MOffset < HeaderSectors || s.MEnd() > limit {
			return corruptf("index at offset %d: entry %d %v: data outside sectors [%d, %d)", at, i, s, HeaderSectors, limit)
		}
	}
	return nil
}

// Header returns the header at offset 0.
func (l *Layer) Header() HeaderTrailer { return l.header }

// Trailer returns the trailer; its fields are authoritative for a sealed layer.
func (l *Layer) Trailer() HeaderTrailer { return l.trailer }

// UUID is the layer's uuid (from the trailer).
func (l *Layer) UUID() UUID { return l.trailer.UUID }

// ParentUUID is the parent layer's uuid (from the trailer).
func (l *Layer) ParentUUID() UUID { return l.trailer.ParentUUID }

// VirtualSize is the disk size in bytes recorded in the trailer.
func (l *Layer) VirtualSize() uint64 { return l.trailer.VirtualSize }

// UserTag is the commit message.
func (l *Layer) UserTag() []byte { return l.trailer.UserTag }

// Segments returns the valid index entries, sorted (for a warp layer with their file
// selector tags). The slice must not be modified.
func (l *Layer) Segments() []Segment { return l.segs }

// ReaderAt returns what stacks read the layer through: the backing store, or for a
// warp layer the resolver over its file and target (addressed by virtual offset).
func (l *Layer) ReaderAt() io.ReaderAt { return l.r }

// FileSize is the size of the layer file in bytes.
func (l *Layer) FileSize() int64 { return l.size }
