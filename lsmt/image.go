package lsmt

import (
	"fmt"
	"io"

	"github.com/obd-project/obd/blockdev"
)

// Image is the stacked view of sealed lower layers, optionally under a writable upper
// layer: one virtual disk implementing blockdev.Target.
//
// ReadAt accepts any offset and length (frontends send 512-aligned requests, an export
// tool need not); reads past Size return io.EOF like any io.ReaderAt. WriteAt, Discard
// and WriteZeroes go to the upper layer and need 512-aligned offsets and lengths; without
// an upper they return blockdev.ErrReadOnly. All methods are safe for concurrent use.
type Image struct {
	lowers []*Layer      // bottom first, as configured
	index  *Index        // merged lower index; Tag = position in top-first order
	files  []io.ReaderAt // lower backing stores by tag
	upper  *Writable     // nil for a read-only image
	size   int64         // size of a read-only image
}

var (
	_ blockdev.Target     = (*Image)(nil)
	_ blockdev.Discarder  = (*Image)(nil)
	_ blockdev.ZeroWriter = (*Image)(nil)
	_ blockdev.ReadOnlyer = (*Image)(nil)
	_ blockdev.Target     = (*Writable)(nil)
	_ blockdev.Discarder  = (*Writable)(nil)
)

// NewImage stacks lowers (bottom first, at most MaxLayers) and an optional writable
// upper. The size is the upper's virtual size; if that is 0 (or there is no upper) it
// is the virtual size of the top-most lower layer that has one, and an upper of size 0
// takes that size, as the reference's stack_files does. The parent-uuid chain is not
// checked (the reference does not either at runtime).
func NewImage(lowers []*Layer, upper *Writable) (*Image, error) {
	if len(lowers) > MaxLayers {
		return nil, fmt.Errorf("lsmt: %d lower layers, at most %d allowed", len(lowers), MaxLayers)
	}
	n := len(lowers)
	levels := make([][]Segment, n)
	files := make([]io.ReaderAt, n)
	var size uint64
	for i, l := range lowers {
		levels[n-1-i] = l.view
		files[n-1-i] = l.r
		if l.VirtualSize() > 0 {
			size = l.VirtualSize()
		}
	}
	merged, err := Merge(levels)
	if err != nil {
		return nil, err
	}
	im := &Image{lowers: lowers, index: NewIndex(merged), files: files, upper: upper, size: int64(size)}
	if upper != nil && upper.VirtualSize() == 0 && size > 0 {
		if err := upper.SetVirtualSize(size); err != nil {
			return nil, err
		}
	}
	return im, nil
}

// Lowers returns the lower layers, bottom first.
func (im *Image) Lowers() []*Layer { return im.lowers }

// Upper returns the writable upper layer, or nil.
func (im *Image) Upper() *Writable { return im.upper }

// LowerIndex returns the merged index of the lower layers (tags top-first).
func (im *Image) LowerIndex() *Index { return im.index }

// Size implements blockdev.Target.
func (im *Image) Size() int64 {
	if im.upper != nil {
		return im.upper.Size()
	}
	return im.size
}

// ReadOnly implements blockdev.ReadOnlyer.
func (im *Image) ReadOnly() bool { return im.upper == nil }

// ReadAt implements blockdev.Target and io.ReaderAt.
//
// The upper's lock is held only for the upper's part: under it the upper's mapping is
// looked up and its (local) data read, and the ranges it does not map are noted; the
// lowers, possibly remote and slow, are read after the lock is released, so writes,
// flushes and other reads never wait behind them. Lowers never change, so the result
// is the disk as it was at that moment under the lock: each sector reads as before or
// after a concurrent write, never a mix.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if im.upper == nil {
		return readSized(p, off, im.size, im.readLower)
	}
	type span struct{ off, n int64 }
	var holesBuf [4]span
	holes := holesBuf[:0]
	u := im.upper
	u.mu.RLock()
	if u.closed {
		u.mu.RUnlock()
		return 0, errClosed
	}
	n, err := readSized(p, off, int64(u.vsize), func(p []byte, off int64) error {
		return u.readLocked(p, off, func(h []byte, at int64) error {
			holes = append(holes, span{at, int64(len(h))})
			return nil
		})
	})
	u.mu.RUnlock()
	if err != nil && err != io.EOF {
		return 0, err
	}
	for _, h := range holes {
		if rerr := im.readLower(p[h.off-off:h.off-off+h.n], h.off); rerr != nil {
			return 0, rerr
		}
	}
	return n, err
}

func (im *Image) readLower(p []byte, off int64) error {
	i := im.index.Find(uint64(off) / SectorSize)
	return readMapped(p, off, im.index.segs[i:], func(tag uint8) io.ReaderAt { return im.files[tag] }, nil)
}

// WriteAt implements blockdev.Target. A sparse upper over lowers fills partly written
// blocks from the disk (see sparse.go).
func (im *Image) WriteAt(p []byte, off int64) (int, error) {
	if im.upper == nil {
		return 0, blockdev.ErrReadOnly
	}
	if im.sparseUnder() {
		return im.writeSparse(p, off)
	}
	return im.upper.WriteAt(p, off)
}

// Discard implements blockdev.Discarder. A sparse upper over lowers writes real zeros
// where a lower maps data, so the discard survives a reopen (see sparse.go).
func (im *Image) Discard(off, length int64) error {
	if im.upper == nil {
		return blockdev.ErrReadOnly
	}
	if im.sparseUnder() {
		return im.discardSparse(off, length)
	}
	return im.upper.Discard(off, length)
}

// WriteZeroes implements blockdev.ZeroWriter (an LSMT discard reads as zeros).
func (im *Image) WriteZeroes(off, length int64) error { return im.Discard(off, length) }

// Flush implements blockdev.Target: syncs the upper layer.
func (im *Image) Flush() error {
	if im.upper == nil {
		return nil
	}
	return im.upper.Sync()
}

// CommitSource describes the whole stack as one layer for Commit (flatten / merge):
// upper entries in front of the merged lowers, the top layer's size, the bottom
// layer's parent. Tags number the lowers top-first; the upper, if any, comes after them.
func (im *Image) CommitSource() (Source, error) {
	src := Source{Segments: im.index.segs, Files: im.files, VirtualSize: uint64(im.Size())}
	if len(im.lowers) > 0 {
		src.ParentUUID = im.lowers[0].ParentUUID()
	}
	if im.upper == nil {
		return src, nil
	}
	n := len(im.files)
	if n >= MaxLayers+1 {
		return Source{}, fmt.Errorf("lsmt: no tag left for the upper layer over %d lowers", n)
	}
	segs, err := mergeTagged([][]Segment{im.upper.Segments(), im.index.segs}, func(level int, s Segment) uint8 {
		if level == 0 {
			return uint8(n)
		}
		return s.Tag
	})
	if err != nil {
		return Source{}, err
	}
	src.Segments = segs
	src.Files = append(append([]io.ReaderAt(nil), im.files...), im.upper.data)
	if len(im.lowers) == 0 {
		src.ParentUUID = im.upper.header.ParentUUID
	}
	return src, nil
}
