package crc32c

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Raw uses one of two implementations, chosen by timing both on first use:
// hash/crc32's, which runs the CPU's crc32 instruction (SSE4.2, arm64 CRC32), or
// slicing-by-8 tables. On real hardware the instruction is 5-10x faster. Under
// emulation (QEMU TCG, which the VM suites and benchmarks run in) it is a helper
// computing the CRC bit by bit, 64 iterations per 8 bytes, and the tables, a few
// plain loads and XORs per byte, are faster. OBD_CRC32C=hw or =table forces one
// (to compare them); anything else, or unset, lets the timing decide.
const (
	implUnknown int32 = iota
	implHW
	implTable
)

var impl atomic.Int32

// ImplementationName says which implementation Raw uses: "hw" (hash/crc32's) or
// "table" (slicing-by-8), choosing it first if no call has yet.
func ImplementationName() string {
	if current() == implTable {
		return "table"
	}
	return "hw"
}

func current() int32 {
	if v := impl.Load(); v != implUnknown {
		return v
	}
	v := choose(os.Getenv("OBD_CRC32C"), calibrate)
	impl.Store(v) // racing first calls may each time it; they agree or either is fine
	return v
}

// choose picks the implementation: the forced one, or the table only when the
// timing says it is clearly (20%) faster, so that noise keeps the hardware path.
func choose(env string, timing func() (hw, tables time.Duration)) int32 {
	switch env {
	case "hw":
		return implHW
	case "table":
		return implTable
	}
	hw, tables := timing()
	if tables > 0 && hw > 0 && tables*5 < hw*4 {
		return implTable
	}
	return implHW
}

// calibrate times both implementations over 16 KiB (a few ZFile blocks), the
// best of five runs each (tens of microseconds on real hardware).
func calibrate() (hw, tables time.Duration) {
	buf := make([]byte, 16<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	hw, tables = time.Hour, time.Hour
	var sink uint32
	for range 5 {
		t0 := time.Now()
		sink ^= ^crc32.Update(^sink, table(), buf)
		t1 := time.Now()
		sink ^= slicing8(sink, buf)
		t2 := time.Now()
		hw, tables = min(hw, t1.Sub(t0)), min(tables, t2.Sub(t1))
	}
	calibrationSink.Store(sink)
	return hw, tables
}

var calibrationSink atomic.Uint32 // keeps the timed calls from being optimised away

// slicing8Table holds the CRC32C of each byte value followed by k zero bytes.
// Made on first use, like table.
var slicing8Table = sync.OnceValue(func() *[8][256]uint32 {
	t := new([8][256]uint32)
	t[0] = *table()
	for i := range 256 {
		c := t[0][i]
		for k := 1; k < 8; k++ {
			c = t[0][c&0xff] ^ c>>8
			t[k][i] = c
		}
	}
	return t
})

// slicing8 feeds p into the raw CRC32C register crc, eight bytes per step.
func slicing8(crc uint32, p []byte) uint32 {
	t := slicing8Table()
	for len(p) >= 8 {
		lo := crc ^ binary.LittleEndian.Uint32(p)
		hi := binary.LittleEndian.Uint32(p[4:])
		crc = t[7][lo&0xff] ^ t[6][lo>>8&0xff] ^ t[5][lo>>16&0xff] ^ t[4][lo>>24] ^
			t[3][hi&0xff] ^ t[2][hi>>8&0xff] ^ t[1][hi>>16&0xff] ^ t[0][hi>>24]
		p = p[8:]
	}
	for _, b := range p {
		crc = t[0][byte(crc)^b] ^ crc>>8
	}
	return crc
}
