package cache

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/obd-project/obd/crc32c"
)

// On-disk layout of one cached blob (all integers little-endian):
//
//	<name>.data  sparse file, Size() bytes; unit i holds blob bytes [i*U, (i+1)*U)
//	<name>.meta  64-byte header, then one fixed-size record per unit
//
// Header (64 bytes):
//
//	0  [8]byte "OBDCACHE"
//	8  u32 version (1)
//	12 u32 unit size U
//	16 u64 blob size
//	24 u32 CRC32C of the key (guards against file-name collisions)
//	28 reserved, zero
//	60 u32 CRC32C of bytes [0, 60)
//
// Record of unit i (16 + 4*U/4096 bytes), at 64 + i*recordSize:
//
//	0  u32 CRC32C of (u64 i, bytes [4,8), bytes [16,end))
//	4  u32 length of the unit's data (U, or less for the last unit)
//	8  u64 last access, unix nanoseconds (an eviction hint, not covered by the CRC)
//	16 u32 CRC32C of each 4 KiB page of the unit's data (the last page may be short)
//
// An all-zero record means "not cached". A record is written only after its data
// and carries the checksum of every page, so every read verifies the bytes it
// serves: a torn, lost, punched or overwritten page fails its check and the unit is
// fetched again. Durability is therefore not needed for correctness and nothing is
// fsync'd; see the package comment for the crash model.

const (
	metaMagic   = "OBDCACHE"
	metaVersion = 1
	headerSize  = 64
	pageSize    = 4096
	recHeadSize = 16
)

// errAbsent reports a record that says "not cached" (all zero).
var errAbsent = errors.New("unit not cached")

type metaHeader struct {
	UnitSize uint32
	BlobSize int64
	KeyCRC   uint32
}

func (h metaHeader) encode() []byte {
	b := make([]byte, headerSize)
	copy(b, metaMagic)
	binary.LittleEndian.PutUint32(b[8:], metaVersion)
	binary.LittleEndian.PutUint32(b[12:], h.UnitSize)
	binary.LittleEndian.PutUint64(b[16:], uint64(h.BlobSize))
	binary.LittleEndian.PutUint32(b[24:], h.KeyCRC)
	binary.LittleEndian.PutUint32(b[60:], crc32c.Checksum(b[:60]))
	return b
}

// decodeHeader parses a meta file header; errors name the field, expected vs found.
func decodeHeader(b []byte) (metaHeader, error) {
	var h metaHeader
	if len(b) < headerSize {
		return h, fmt.Errorf("header: %d bytes, want %d", len(b), headerSize)
	}
	if string(b[:8]) != metaMagic {
		return h, fmt.Errorf("header magic at offset 0: want %q, found %q", metaMagic, b[:8])
	}
	if want, got := crc32c.Checksum(b[:60]), binary.LittleEndian.Uint32(b[60:]); want != got {
		return h, fmt.Errorf("header CRC at offset 60: want %#08x, found %#08x", want, got)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != metaVersion {
		return h, fmt.Errorf("header version at offset 8: want %d, found %d", metaVersion, v)
	}
	h.UnitSize = binary.LittleEndian.Uint32(b[12:])
	h.BlobSize = int64(binary.LittleEndian.Uint64(b[16:]))
	h.KeyCRC = binary.LittleEndian.Uint32(b[24:])
	if !validUnitSize(int64(h.UnitSize)) {
		return h, fmt.Errorf("header unit size at offset 12: %d is not a power of two in [%d, %d]", h.UnitSize, MinRefillSize, MaxRefillSize)
	}
	if h.BlobSize < 0 {
		return h, fmt.Errorf("header blob size at offset 16: %d is negative", h.BlobSize)
	}
	return h, nil
}

func validUnitSize(n int64) bool {
	return n >= MinRefillSize && n <= MaxRefillSize && n&(n-1) == 0
}

// recordSize is the size of one unit record for a unit size.
func recordSize(unitSize int) int { return recHeadSize + 4*(unitSize/pageSize) }

// recordOffset is the offset of unit's record in the meta file.
func recordOffset(unit int, unitSize int) int64 {
	return headerSize + int64(unit)*int64(recordSize(unitSize))
}

func recordCRC(rec []byte, unit int) uint32 {
	var idx [8]byte
	binary.LittleEndian.PutUint64(idx[:], uint64(unit))
	c := crc32c.Checksum(idx[:])
	c = crc32c.Update(c, rec[4:8])
	return crc32c.Update(c, rec[recHeadSize:])
}

// encodeRecord fills rec (recordSize bytes) for a cached unit of length bytes whose
// page checksums are crcs.
func encodeRecord(rec []byte, unit, length int, atime int64, crcs []uint32) {
	clear(rec)
	binary.LittleEndian.PutUint32(rec[4:], uint32(length))
	binary.LittleEndian.PutUint64(rec[8:], uint64(atime))
	for i, c := range crcs {
		binary.LittleEndian.PutUint32(rec[recHeadSize+4*i:], c)
	}
	binary.LittleEndian.PutUint32(rec[0:], recordCRC(rec, unit))
}

// decodeRecord checks the record of unit, whose data must be wantLen bytes, and
// returns its page checksums and access time. It returns errAbsent for an all-zero
// record and a descriptive error for a corrupt one.
func decodeRecord(rec []byte, unit, wantLen int) ([]uint32, int64, error) {
	if len(rec) < recHeadSize {
		return nil, 0, fmt.Errorf("record of unit %d: %d bytes, want at least %d", unit, len(rec), recHeadSize)
	}
	sum := binary.LittleEndian.Uint32(rec[0:])
	length := binary.LittleEndian.Uint32(rec[4:])
	if sum == 0 && length == 0 {
		return nil, 0, errAbsent
	}
	pages := (wantLen + pageSize - 1) / pageSize
	if wantLen <= 0 || recHeadSize+4*pages > len(rec) {
		return nil, 0, fmt.Errorf("record of unit %d: unit length %d does not fit a %d-byte record", unit, wantLen, len(rec))
	}
	if int64(length) != int64(wantLen) {
		return nil, 0, fmt.Errorf("record of unit %d: length at +4: want %d, found %d", unit, wantLen, length)
	}
	if want := recordCRC(rec, unit); want != sum {
		return nil, 0, fmt.Errorf("record of unit %d: CRC at +0: want %#08x, found %#08x", unit, want, sum)
	}
	crcs := make([]uint32, pages)
	for i := range crcs {
		crcs[i] = binary.LittleEndian.Uint32(rec[recHeadSize+4*i:])
	}
	return crcs, int64(binary.LittleEndian.Uint64(rec[8:])), nil
}

// pageCRCs returns the checksum of each 4 KiB page of data. The seed is non-zero
// so that leading zero bytes change the checksum.
func pageCRCs(data []byte) []uint32 {
	crcs := make([]uint32, 0, (len(data)+pageSize-1)/pageSize)
	for len(data) > 0 {
		n := min(len(data), pageSize)
		crcs = append(crcs, crc32c.Salted(data[:n]))
		data = data[n:]
	}
	return crcs
}
