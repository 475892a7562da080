package lsmt

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Header/trailer flag bits (u32 at +28). Other bits are written by no known tool.
const (
	FlagHeader   = 0x01 // set in headers, clear in trailers
	FlagDataFile = 0x02 // set for data (and sealed) files, clear for index files
	FlagSealed   = 0x04 // read-only layer
	FlagSparse   = 0x10 // sparse writable data file
)

// Flag values the reference writes.
const (
	flagsSealedHeader  = FlagHeader | FlagDataFile | FlagSealed // 0x07, commit output header
	flagsSealedTrailer = FlagDataFile | FlagSealed              // 0x06
	flagsRWData        = FlagHeader | FlagDataFile              // 0x03 (| FlagSparse = 0x13)
	flagsRWIndex       = FlagHeader                             // 0x01
)

var (
	magic0 = [8]byte{'L', 'S', 'M', 'T', 0, 1, 2, 0}
	// magic1 is photon UUID {0xd2637e65,0x4494,0x4c08,0xd2a2,{c8 ec 4f cf ae 8a}} in memory order.
	magic1 = [16]byte{0x65, 0x7e, 0x63, 0xd2, 0x94, 0x44, 0x08, 0x4c, 0xa2, 0xd2, 0xc8, 0xec, 0x4f, 0xcf, 0xae, 0x8a}
)

// Byte offsets of the HeaderTrailer fields.
const (
	htSize        = 24
	htFlags       = 28
	htIndexOffset = 32
	htIndexSize   = 40
	htVirtualSize = 48
	htUUID        = 56
	htParentUUID  = 93
	htVersion     = 132
	htSubVersion  = 133
	htUserTag     = 134
)

// HeaderTrailer is the 4096-byte block at the start (header) and, for sealed layers,
// the end (trailer) of an LSMT file.
type HeaderTrailer struct {
	Flags       uint32
	IndexOffset uint64 // bytes
	IndexSize   uint64 // entries, including padding entries in commit output
	VirtualSize uint64 // bytes
	UUID        UUID
	ParentUUID  UUID
	Version     uint8  // always written as 1
	SubVersion  uint8  // always written as 1
	UserTag     []byte // commit message, at most MaxUserTagSize bytes
}

func (h HeaderTrailer) IsHeader() bool   { return h.Flags&FlagHeader != 0 }
func (h HeaderTrailer) IsDataFile() bool { return h.Flags&FlagDataFile != 0 }
func (h HeaderTrailer) IsSealed() bool   { return h.Flags&FlagSealed != 0 }
func (h HeaderTrailer) IsSparse() bool   { return h.Flags&FlagSparse != 0 }

// MarshalBinary returns the 4096-byte on-disk form.
func (h *HeaderTrailer) MarshalBinary() ([]byte, error) {
	if len(h.UserTag) > MaxUserTagSize {
		return nil, fmt.Errorf("lsmt: user tag is %d bytes, at most %d allowed", len(h.UserTag), MaxUserTagSize)
	}
	b := make([]byte, HeaderSize)
	copy(b[0:8], magic0[:])
	copy(b[8:24], magic1[:])
	le := binary.LittleEndian
	le.PutUint32(b[htSize:], headerUsedBytes)
	le.PutUint32(b[htFlags:], h.Flags)
	le.PutUint64(b[htIndexOffset:], h.IndexOffset)
	le.PutUint64(b[htIndexSize:], h.IndexSize)
	le.PutUint64(b[htVirtualSize:], h.VirtualSize)
	copy(b[htUUID:], h.UUID.String())
	copy(b[htParentUUID:], h.ParentUUID.String())
	b[htVersion] = 1
	b[htSubVersion] = 1
	copy(b[htUserTag:], h.UserTag)
	return b, nil
}

// UnmarshalBinary parses a header or trailer. It checks only the magics; what a flag
// combination must be depends on where the block sits, which the caller checks.
// A uuid field that does not parse reads as the null UUID (the reference does not
// validate it either).
func (h *HeaderTrailer) UnmarshalBinary(b []byte) error {
	if len(b) < HeaderSize {
		return corruptf("block is %d bytes, want %d", len(b), HeaderSize)
	}
	if !bytes.Equal(b[0:8], magic0[:]) {
		return corruptf("bad magic0 % x, want % x", b[0:8], magic0[:])
	}
	if !bytes.Equal(b[8:24], magic1[:]) {
		return corruptf("bad magic1 % x, want % x", b[8:24], magic1[:])
	}
	le := binary.LittleEndian
	h.Flags = le.Uint32(b[htFlags:])
	h.IndexOffset = le.Uint64(b[htIndexOffset:])
	h.IndexSize = le.Uint64(b[htIndexSize:])
	h.VirtualSize = le.Uint64(b[htVirtualSize:])
	h.UUID = parseUUIDField(b[htUUID : htUUID+37])
	h.ParentUUID = parseUUIDField(b[htParentUUID : htParentUUID+37])
	h.Version = b[htVersion]
	h.SubVersion = b[htSubVersion]
	tag := b[htUserTag : htUserTag+MaxUserTagSize]
	if i := bytes.IndexByte(tag, 0); i >= 0 {
		tag = tag[:i]
	}
	h.UserTag = append([]byte(nil), tag...)
	return nil
}

func parseUUIDField(b []byte) UUID {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	u, _ := parseUUID(string(b))
	return u
}
