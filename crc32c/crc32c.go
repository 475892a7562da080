// Package crc32c computes CRC32C (Castagnoli) the way OverlayBD stores it: the raw
// register value, with no pre-inversion and no final XOR (the semantics of the x86
// crc32 instruction). hash/crc32's Castagnoli checksum inverts on entry and exit,
// so its results differ; Raw undoes both inversions and keeps the hardware path.
package crc32c

import (
	"hash/crc32"
	"sync"
)

// Salt is the seed OverlayBD uses for ZFile per-block checksums
// (NOI_WELL_KNOWN_PRIME in the reference).
const Salt uint32 = 100007

// table is made on first use, not at init: every obd command links this package.
var table = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

// Raw returns the raw CRC32C register after feeding p into a register holding seed
// (select.go: the CPU's instruction, or tables where that is emulated).
func Raw(seed uint32, p []byte) uint32 {
	if current() == implTable {
		return slicing8(seed, p)
	}
	return ^crc32.Update(^seed, table(), p)
}

// Update extends a running raw CRC32C with p. Because the raw form has no final
// XOR, Update(Raw(s, a), b) == Raw(s, a||b).
func Update(crc uint32, p []byte) uint32 {
	return Raw(crc, p)
}

// Checksum is the raw CRC32C of p starting from 0 (the reference's crc32c()).
func Checksum(p []byte) uint32 { return Raw(0, p) }

// Salted is the raw CRC32C of p starting from Salt (the reference's ZFile block CRC).
func Salted(p []byte) uint32 { return Raw(Salt, p) }
