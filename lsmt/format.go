package lsmt

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Format limits and constants (overlaybd lsmt/file.h, index.h).
const (
	SectorSize      = 512  // LSMT addressing unit
	HeaderSize      = 4096 // header and trailer space
	HeaderSectors   = HeaderSize / SectorSize
	SegmentSize     = 16                       // bytes of one encoded index entry
	MaxOffset       = 1<<50 - 1                // largest offset; also the invalid-entry marker
	InvalidOffset   = MaxOffset                // offset of padding / invalid entries
	MaxLength       = 1<<14 - 1                // 16383 sectors per segment
	MaxMOffset      = 1<<55 - 1                // largest mapped sector
	MaxIOSize       = 4 << 20                  // writes and discards are split into pieces of at most this
	MaxLayers       = 255                      // layers in one stack / merge
	MaxROIndexSize  = 1_000_000                // entries of one sealed layer
	MaxIndexSize    = 128_000_000              // entries of a writable layer or a merged index
	MaxUserTagSize  = 256                      // bytes of the commit message
	headerUsedBytes = 390                      // sizeof(HeaderTrailer) written at +24
	commitCopySize  = 32 << 10                 // commit copies data in 32 KiB pieces like the reference
	commitIndexPad  = HeaderSize / SegmentSize // commit pads the index to 256 entries
)

// ErrCorrupt is wrapped by every error about malformed layer contents, so callers can
// tell bad input from I/O failures with errors.Is.
var ErrCorrupt = errors.New("lsmt: corrupt layer")

// corruptError formats lazily: openers reject most malformed input without anyone
// reading the message (fuzzing, probing which format a blob is).
type corruptError struct {
	format string
	args   []any
}

func (e *corruptError) Error() string { return "lsmt: " + fmt.Sprintf(e.format, e.args...) }
func (e *corruptError) Unwrap() error { return ErrCorrupt }

func corruptf(format string, args ...any) error {
	return &corruptError{format: format, args: args}
}

// inContext prefixes err's message with a description of where it happened, keeping
// a corrupt-layer error a corrupt-layer error.
func inContext(err error, format string, args ...any) error {
	if ce, ok := err.(*corruptError); ok {
		return corruptf(format+": "+ce.format, append(args, ce.args...)...)
	}
	return fmt.Errorf("lsmt: "+format+": %w", append(args, err)...)
}

// Segment is one index entry: Length sectors of the virtual disk starting at sector
// Offset are stored at sector MOffset of the backing file, or read as zeros if Zeroed.
// Tag selects the backing file in a merged index (0 on disk for normal layers).
type Segment struct {
	Offset  uint64 // virtual sector, 50 bits
	MOffset uint64 // sector in the backing file, 55 bits
	Length  uint32 // sectors, at most MaxLength
	Zeroed  bool   // a discarded extent: no data, reads as zeros
	Tag     uint8
}

// End is the first virtual sector after s.
func (s Segment) End() uint64 { return s.Offset + uint64(s.Length) }

// MEnd is the first backing sector after s's data (MOffset for zeroed segments).
func (s Segment) MEnd() uint64 {
	if s.Zeroed {
		return s.MOffset
	}
	return s.MOffset + uint64(s.Length)
}

// Valid reports whether s is a real entry rather than padding.
func (s Segment) Valid() bool { return s.Offset != InvalidOffset }

// InvalidSegment is the padding entry: bytes FF FF FF FF FF FF 03 00, then 8 zeros.
var InvalidSegment = Segment{Offset: InvalidOffset}

// trimFront drops the first d sectors of s. Zeroed segments keep their (meaningless) moffset.
func (s Segment) trimFront(d uint64) Segment {
	s.Offset += d
	s.Length -= uint32(d)
	if !s.Zeroed {
		s.MOffset += d
	}
	return s
}

// Encode writes the 16-byte on-disk form of s into b.
func (s Segment) Encode(b []byte) {
	w0 := s.Offset&MaxOffset | uint64(s.Length&MaxLength)<<50
	w1 := s.MOffset & MaxMOffset
	if s.Zeroed {
		w1 |= 1 << 55
	}
	w1 |= uint64(s.Tag) << 56
	binary.LittleEndian.PutUint64(b[0:8], w0)
	binary.LittleEndian.PutUint64(b[8:16], w1)
}

// DecodeSegment reads a 16-byte index entry. Every bit pattern decodes; validity is
// the reader's business.
func DecodeSegment(b []byte) Segment {
	w0 := binary.LittleEndian.Uint64(b[0:8])
	w1 := binary.LittleEndian.Uint64(b[8:16])
	return Segment{
		Offset:  w0 & MaxOffset,
		Length:  uint32(w0 >> 50),
		MOffset: w1 & MaxMOffset,
		Zeroed:  w1>>55&1 == 1,
		Tag:     uint8(w1 >> 56),
	}
}

// String formats s like the reference test vectors: {offset,length,moffset[,z][,tag]}.
func (s Segment) String() string {
	z := ""
	if s.Zeroed {
		z = ",z"
	}
	return fmt.Sprintf("{%d,%d,%d%s,t%d}", s.Offset, s.Length, s.MOffset, z, s.Tag)
}

// encodeSegments appends the on-disk form of segs to dst.
func encodeSegments(dst []byte, segs []Segment) []byte {
	var b [SegmentSize]byte
	for _, s := range segs {
		s.Encode(b[:])
		dst = append(dst, b[:]...)
	}
	return dst
}
