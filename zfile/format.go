// Package zfile reads and writes OverlayBD ZFile, a block-compressed file format with
// random access: a 512-byte header, independently compressed blocks (LZ4 block format
// or zstd frames) each optionally followed by a salted CRC32C, a jump table of block
// lengths and a 512-byte trailer. See docs/overlaybd-format.md §4.
//
// The package is pure format code: the Reader takes any io.ReaderAt and finds
// optional capabilities (Evicter) by type assertion.
package zfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/obd-project/obd/crc32c"
)

// HeaderSize is the on-disk size of the header and of the trailer.
const HeaderSize = 512

// Limits enforced by the reader and writer.
const (
	DefaultBlockSize = 4096
	MinBlockSize     = 4096  // smallest block size the writer produces (reference --bs 4)
	MaxBlockSize     = 65536 // reference MAX_READ_SIZE; also the reader's limit
	minReadBlockSize = 512   // smallest power of two the reader accepts
	MaxBlocks        = 1_000_000_000
	crcSize          = 4
	recordSize       = 96 // the C struct size, stored in the size field
)

// Flag bits of the header/trailer flags word. Only bits 0-4 are meaningful: legacy
// writers left stack garbage in the upper bits.
const (
	FlagHeader          = 1 << 0 // 1 = header, 0 = trailer
	FlagDataFile        = 1 << 1
	FlagSealed          = 1 << 2
	FlagHeaderOverwrite = 1 << 3 // header already carries the final index fields
	FlagDigest          = 1 << 4 // digest and index_crc are valid
	flagKnownMask       = 0x1f
)

// Algorithm is the block compression algorithm stored at header offset 76.
type Algorithm uint8

const (
	LZ4  Algorithm = 1
	Zstd Algorithm = 2
)

func (a Algorithm) String() string {
	switch a {
	case 0:
		return "minilzo"
	case LZ4:
		return "lz4"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}

// ParseAlgorithm maps the reference tools' names ("lz4", "zstd") to an Algorithm.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "lz4", "LZ4":
		return LZ4, nil
	case "zstd", "ZSTD":
		return Zstd, nil
	}
	return 0, fmt.Errorf("zfile: unknown algorithm %q (want lz4 or zstd)", s)
}

var magic = [24]byte{'Z', 'F', 'i', 'l', 'e', 0, 1, 0,
	't', 'u', 'j', 'i', '.', 'y', 'y', 'f', '@', 'A', 'l', 'i', 'b', 'a', 'b', 'a'}

// ErrFormat is wrapped by every error about a malformed header, trailer or jump table.
var ErrFormat = errors.New("zfile: invalid format")

// IsZFile reports whether head (the first bytes of a file, at least 40) starts with
// the ZFile magic and a record flagged as header.
func IsZFile(head []byte) bool {
	if len(head) < 40 || !bytes.Equal(head[:24], magic[:]) {
		return false
	}
	return binary.LittleEndian.Uint64(head[32:])&FlagHeader != 0
}

// Record is one decoded 512-byte header or trailer.
type Record struct {
	Flags        uint64 // raw flags word, including legacy garbage in bits >= 5
	Digest       uint32 // crc32c of the 512 bytes with this field zeroed (if FlagDigest)
	IndexOffset  uint64 // file offset of the jump table
	IndexSize    uint64 // number of blocks
	OriginalSize uint64 // uncompressed size
	IndexCRC     uint32 // crc32c of the jump table bytes (if FlagDigest)
	BlockSize    uint32
	Algorithm    Algorithm
	Level        uint8
	UseDict      uint8
	DictSize     uint32
	Verify       bool // blocks carry a trailing CRC
}

// Has reports whether flag bit f is set (f is one of the Flag constants).
func (r *Record) Has(f uint64) bool { return r.Flags&f != 0 }

// decodeRecord parses b (512 bytes). It checks the magic only.
func decodeRecord(b []byte) (Record, bool) {
	if len(b) < HeaderSize || !bytes.Equal(b[:24], magic[:]) {
		return Record{}, false
	}
	le := binary.LittleEndian
	return Record{
		Digest:       le.Uint32(b[28:]),
		Flags:        le.Uint64(b[32:]),
		IndexOffset:  le.Uint64(b[40:]),
		IndexSize:    le.Uint64(b[48:]),
		OriginalSize: le.Uint64(b[56:]),
		IndexCRC:     le.Uint32(b[64:]),
		BlockSize:    le.Uint32(b[72:]),
		Algorithm:    Algorithm(b[76]),
		Level:        b[77],
		UseDict:      b[78],
		DictSize:     le.Uint32(b[84:]),
		Verify:       b[88] != 0,
	}, true
}

// encode returns the 512-byte record with its digest computed when FlagDigest is set,
// laid out exactly as the reference writes it (unused bytes zero).
func (r *Record) encode() []byte {
	b := make([]byte, HeaderSize)
	le := binary.LittleEndian
	copy(b, magic[:])
	le.PutUint32(b[24:], recordSize)
	le.PutUint64(b[32:], r.Flags)
	le.PutUint64(b[40:], r.IndexOffset)
	le.PutUint64(b[48:], r.IndexSize)
	le.PutUint64(b[56:], r.OriginalSize)
	le.PutUint32(b[64:], r.IndexCRC)
	le.PutUint32(b[72:], r.BlockSize)
	b[76] = byte(r.Algorithm)
	b[77] = r.Level
	b[78] = r.UseDict
	le.PutUint32(b[84:], r.DictSize)
	if r.Verify {
		b[88] = 1
	}
	if r.Has(FlagDigest) {
		r.Digest = crc32c.Checksum(b)
		le.PutUint32(b[28:], r.Digest)
	}
	return b
}

// digestOK checks the stored digest of raw record b: crc32c of all 512 bytes with the
// digest field read as zero.
func digestOK(b []byte) (want, got uint32, ok bool) {
	var tmp [HeaderSize]byte
	copy(tmp[:], b[:HeaderSize])
	want = binary.LittleEndian.Uint32(tmp[28:])
	binary.LittleEndian.PutUint32(tmp[28:], 0)
	got = crc32c.Checksum(tmp[:])
	return want, got, want == got
}

func isPow2(n uint32) bool { return n != 0 && n&(n-1) == 0 }
