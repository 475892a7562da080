package lsmt

import (
	"io"
	"os"

	"github.com/obd-project/obd/blockdev"
)

var (
	_ blockdev.FileMapper = (*Image)(nil)
	_ blockdev.FileMapper = (*Writable)(nil)
)

// LocalFiler is implemented by a reader that only forwards the reads of a local
// file (labelling its errors, say) and returns the file, or nil when it has none.
// Image.MapFile then maps the layer to that file.
type LocalFiler interface {
	LocalFile() *os.File
}

// localFd is r's descriptor when r is a plain local file, whose bytes a frontend
// may read itself; -1 for anything else (ZFile, remote or wrapped readers, whose
// ReadAt does more than pread).
func localFd(r io.ReaderAt) int {
	f, ok := r.(*os.File)
	if lf, isLF := r.(LocalFiler); isLF {
		f, ok = lf.LocalFile(), true
	}
	if !ok || f == nil {
		return -1
	}
	return int(f.Fd())
}

// mapSegments is readMapped's twin for blockdev.FileMapper: it appends the extents
// of virtual bytes [off, end) given segs (in order, starting with the first whose
// end lies past off). Zeroed segments map to zeros; gaps go to hole, or map to
// zeros when hole is nil. It reports false when a segment's file is not local.
func mapSegments(dst []blockdev.FileExtent, off, end int64, segs []Segment, fd func(tag uint8) int,
	hole func(dst []blockdev.FileExtent, off, end int64) ([]blockdev.FileExtent, bool)) ([]blockdev.FileExtent, bool) {
	pos := off
	gap := func(to int64) bool {
		if hole == nil {
			dst = append(dst, blockdev.FileExtent{Fd: -1, Length: to - pos})
			return true
		}
		var ok bool
		dst, ok = hole(dst, pos, to)
		return ok
	}
	for _, s := range segs {
		sb := int64(s.Offset) * SectorSize
		if sb >= end {
			break
		}
		if sb > pos {
			if !gap(sb) {
				return dst, false
			}
			pos = sb
		}
		se := min(int64(s.End())*SectorSize, end)
		if se <= pos {
			continue
		}
		e := blockdev.FileExtent{Fd: -1, Length: se - pos}
		if !s.Zeroed {
			if e.Fd = fd(s.Tag); e.Fd < 0 {
				return dst, false
			}
			e.Offset = int64(s.MOffset)*SectorSize + pos - sb
		}
		dst = append(dst, e)
		pos = se
	}
	if pos < end && !gap(end) {
		return dst, false
	}
	return dst, true
}

// MapFile implements blockdev.FileMapper: the range maps to the upper's data file
// and the lowers' files when all of those it touches are plain local files. Like
// ReadAt, the upper's part is taken under its read lock and the lowers (which never
// change) fill its holes.
func (im *Image) MapFile(dst []blockdev.FileExtent, off, n int64) ([]blockdev.FileExtent, bool) {
	if off < 0 || n < 0 || off+n > im.Size() {
		return dst, false
	}
	if im.upper == nil {
		return im.mapLower(dst, off, off+n)
	}
	u := im.upper
	u.mu.RLock()
	defer u.mu.RUnlock()
	if u.closed || off+n > int64(u.vsize) {
		return dst, false
	}
	return u.mapLocked(dst, off, off+n, im.mapLower)
}

func (im *Image) mapLower(dst []blockdev.FileExtent, off, end int64) ([]blockdev.FileExtent, bool) {
	i := im.index.Find(uint64(off) / SectorSize)
	return mapSegments(dst, off, end, im.index.segs[i:], func(tag uint8) int { return localFd(im.files[tag]) }, nil)
}

// MapFile implements blockdev.FileMapper for the layer alone (holes are zeros).
func (w *Writable) MapFile(dst []blockdev.FileExtent, off, n int64) ([]blockdev.FileExtent, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed || off < 0 || n < 0 || off+n > int64(w.vsize) {
		return dst, false
	}
	return w.mapLocked(dst, off, off+n, nil)
}

// mapLocked is readLocked's twin. The caller holds w.mu.
func (w *Writable) mapLocked(dst []blockdev.FileExtent, off, end int64,
	hole func([]blockdev.FileExtent, int64, int64) ([]blockdev.FileExtent, bool)) ([]blockdev.FileExtent, bool) {
	var buf [16]Segment
	segs := w.segs.Lookup(uint64(off)/SectorSize, (uint64(end)+SectorSize-1)/SectorSize, buf[:0])
	fd := localFd(w.data)
	return mapSegments(dst, off, end, segs, func(uint8) int { return fd }, hole)
}
