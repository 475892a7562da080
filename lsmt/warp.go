package lsmt

import (
	"fmt"
	"io"
	"math"
)

// Warp-layer file selectors (turboOCI "fastoci" layers).
const (
	WarpTagFile   = 0 // data stored in the layer file itself (file-system metadata)
	WarpTagTarget = 1 // data at moffset of the target: the uncompressed OCI tar stream
)

// OpenWarpLayer opens a sealed turboOCI layer (overlaybd-commit --turboOCI output):
// the same header/trailer/order validation as OpenLayer, but entry tags are kept as
// file selectors (0 = this file, 1 = target) and moffsets are not bounds-checked,
// since tag-1 entries address the target. In a stack the layer contributes an identity
// index (moffset = offset) and resolves reads through its own index, as the reference
// does.
//
// Unlike the reference, which subtracts the smallest tag of the layer from every tag
// (so a layer holding only target entries would read them from the layer file), tags
// are used as stored; a tag other than 0 or 1 is rejected.
func OpenWarpLayer(r io.ReaderAt, size int64, target io.ReaderAt) (*Layer, error) {
	if target == nil {
		return nil, fmt.Errorf("lsmt: a warp layer needs its target")
	}
	l, err := openSealed(r, size)
	if err != nil {
		return nil, err
	}
	at := int64(l.trailer.IndexOffset)
	if err := checkSealedIndex(l.segs, l.trailer.IndexOffset, at, false); err != nil {
		return nil, err
	}
	view := make([]Segment, len(l.segs))
	for i, s := range l.segs {
		if s.Tag > WarpTagTarget {
			return nil, corruptf("warp index at offset %d: entry %d %v has tag %d, want %d or %d", at, i, s, s.Tag, WarpTagFile, WarpTagTarget)
		}
		// The reference skips the moffset checks here; obd keeps the two that
		// matter: tag-0 data lies in this file's data area (commit packs it
		// there), and no moffset overflows a byte offset.
		switch {
		case s.MEnd() > maxSectorOffset:
			return nil, corruptf("warp index at offset %d: entry %d %v: moffset beyond any file", at, i, s)
		case s.Tag == WarpTagFile && !s.Zeroed && (s.MOffset < HeaderSectors || s.MEnd() > l.trailer.IndexOffset/SectorSize):
			return nil, corruptf("warp index at offset %d: entry %d %v: data outside sectors [%d, %d)", at, i, s, HeaderSectors, l.trailer.IndexOffset/SectorSize)
		}
		view[i] = Segment{Offset: s.Offset, Length: s.Length, MOffset: s.Offset, Zeroed: s.Zeroed}
	}
	files := [2]io.ReaderAt{r, target}
	l.view = view
	l.r = &warpReader{index: NewIndex(l.segs), files: files}
	return l, nil
}

// maxSectorOffset is the largest sector whose byte offset fits an int64.
const maxSectorOffset = math.MaxInt64 / SectorSize

// warpReader reads a warp layer's virtual disk: each segment from the file its tag
// selects; holes read as zeros.
type warpReader struct {
	index *Index
	files [2]io.ReaderAt
}

func (w *warpReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("lsmt: warp layer read at negative offset %d", off)
	}
	i := w.index.Find(uint64(off) / SectorSize)
	err := readMapped(p, off, w.index.segs[i:], func(tag uint8) io.ReaderAt { return w.files[tag] }, nil)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}
