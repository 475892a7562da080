package lsmt

import (
	"errors"
	"fmt"
	"io"
)

// readSized clips a read of any offset and length to a device of the given size:
// ReaderAt semantics, io.EOF when p extends past the end.
func readSized(p []byte, off, size int64, read func([]byte, int64) error) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("lsmt: read at negative offset %d", off)
	}
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	if err := read(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readMapped fills p with virtual bytes [off, off+len(p)) given segs, the segments in
// order starting with the first whose end lies past off (later ones beyond the range
// are ignored). Bytes of zeroed segments read as zeros; gaps are filled by hole, or
// zeroed when hole is nil.
func readMapped(p []byte, off int64, segs []Segment, file func(tag uint8) io.ReaderAt, hole func([]byte, int64) error) error {
	end := off + int64(len(p))
	pos := off
	fillHole := func(to int64) error {
		if hole == nil {
			clear(p[pos-off : to-off])
			return nil
		}
		return hole(p[pos-off:to-off], pos)
	}
	for _, s := range segs {
		sb := int64(s.Offset) * SectorSize
		if sb >= end {
			break
		}
		if sb > pos {
			if err := fillHole(sb); err != nil {
				return err
			}
			pos = sb
		}
		se := min(int64(s.End())*SectorSize, end)
		if se <= pos {
			continue
		}
		dst := p[pos-off : se-off]
		if s.Zeroed {
			clear(dst)
		} else if err := readBacking(file(s.Tag), dst, int64(s.MOffset)*SectorSize+pos-sb); err != nil {
			return err
		}
		pos = se
	}
	if pos < end {
		return fillHole(end)
	}
	return nil
}

// readBacking reads a segment's data. Like the reference, data cut short by the end of
// the backing file reads as zeros (a truncated layer stays readable); any other read
// error is returned.
func readBacking(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil { // a ReaderAt breaking its contract: one more read, as the reference does
		var m int
		m, err = r.ReadAt(p[n:], off+int64(n))
		n += m
		if n == len(p) {
			return nil
		}
		if m == 0 && err == nil {
			err = io.EOF
		}
	}
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return fmt.Errorf("lsmt: reading backing data at offset %d: %w", off+int64(n), err)
}
