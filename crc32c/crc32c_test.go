package crc32c

import (
	"hash/crc32"
	"math/rand"
	"testing"
	"time"
)

// bitwise is an independent, table-free raw CRC32C (reflected 0x82F63B78) to check
// the accelerated path against.
func bitwise(crc uint32, p []byte) uint32 {
	for _, b := range p {
		crc ^= uint32(b)
		for i := 0; i < 8; i++ {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0x82F63B78
			} else {
				crc >>= 1
			}
		}
	}
	return crc
}

func TestRawMatchesBitwise(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, n := range []int{0, 1, 7, 8, 63, 64, 100, 4096, 65536 + 13} {
		p := make([]byte, n)
		rng.Read(p)
		for _, seed := range []uint32{0, Salt, 0xffffffff, 0x12345678} {
			if got, want := Raw(seed, p), bitwise(seed, p); got != want {
				t.Fatalf("Raw(%#x, %d bytes) = %#x, want %#x", seed, n, got, want)
			}
		}
	}
}

func TestKnownVectors(t *testing.T) {
	// Raw semantics: empty input leaves the seed untouched.
	if got := Raw(Salt, nil); got != Salt {
		t.Fatalf("Raw(Salt, nil) = %d, want %d", got, Salt)
	}
	// The standard CRC32C check value of "123456789" is 0xE3069283 with inversions;
	// the raw register from ^0 before the final XOR is its complement.
	if got := Raw(0xffffffff, []byte("123456789")); got != ^uint32(0xE3069283) {
		t.Fatalf("raw check value = %#x, want %#x", got, ^uint32(0xE3069283))
	}
	// The standard (inverted) checksum must differ from Checksum: callers must not mix them.
	p := []byte("overlaybd")
	if Checksum(p) == crc32.Checksum(p, table()) {
		t.Fatal("raw and standard CRC32C unexpectedly agree")
	}
	if Salted(p) != Raw(100007, p) {
		t.Fatal("Salted does not use seed 100007")
	}
}

func TestUpdateIsIncremental(t *testing.T) {
	p := make([]byte, 10000)
	rand.New(rand.NewSource(2)).Read(p)
	whole := Raw(Salt, p)
	for _, cut := range []int{0, 1, 511, 5000, 9999, 10000} {
		if got := Update(Raw(Salt, p[:cut]), p[cut:]); got != whole {
			t.Fatalf("split at %d: %#x, want %#x", cut, got, whole)
		}
	}
}

// BenchmarkRaw64K: Raw as chosen on this machine (chose-table is 1 when the
// tables won the timing, as under QEMU TCG), and each implementation alone.
func BenchmarkRaw64K(b *testing.B) {
	p := make([]byte, 65536)
	for _, c := range []struct {
		name string
		fn   func(uint32, []byte) uint32
	}{
		{"chosen", Raw},
		{"hw", func(s uint32, p []byte) uint32 { return ^crc32.Update(^s, table(), p) }},
		{"table", slicing8},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(p)))
			for i := 0; i < b.N; i++ {
				c.fn(Salt, p)
			}
			if c.name == "chosen" && current() == implTable {
				b.ReportMetric(1, "chose-table")
			} else if c.name == "chosen" {
				b.ReportMetric(0, "chose-table")
			}
		})
	}
}

// The slicing-by-8 implementation (used where the crc32 instruction is emulated)
// agrees with the bit-by-bit definition and with the hardware path, for every
// length around its 8-byte steps, unaligned starts and any seed.
func TestSlicing8MatchesBitwise(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	buf := make([]byte, 70000)
	rng.Read(buf)
	for n := range 80 {
		for _, start := range []int{0, 1, 3, 7} {
			p := buf[start : start+n]
			for _, seed := range []uint32{0, Salt, 0xffffffff, rng.Uint32()} {
				if got, want := slicing8(seed, p), bitwise(seed, p); got != want {
					t.Fatalf("slicing8(%#x, %d bytes at %d) = %#x, want %#x", seed, n, start, got, want)
				}
			}
		}
	}
	for _, n := range []int{4096, 65536 + 13} {
		if got, want := slicing8(Salt, buf[5:5+n]), ^crc32.Update(^Salt, table(), buf[5:5+n]); got != want {
			t.Fatalf("slicing8 of %d bytes = %#x, hash/crc32 %#x", n, got, want)
		}
	}
}

// The hardware path stays unless the tables are clearly faster (as under
// emulation); OBD_CRC32C forces either.
func TestChooseImplementation(t *testing.T) {
	us := time.Microsecond
	for _, c := range []struct {
		env       string
		hw, table time.Duration
		want      int32
	}{
		{"", 2 * us, 12 * us, implHW},       // real hardware
		{"", 100 * us, 95 * us, implHW},     // within noise: keep the instruction
		{"", 900 * us, 300 * us, implTable}, // emulated crc32 instruction
		{"", 0, 0, implHW},
		{"hw", 900 * us, 300 * us, implHW},
		{"table", 2 * us, 12 * us, implTable},
	} {
		if got := choose(c.env, func() (time.Duration, time.Duration) { return c.hw, c.table }); got != c.want {
			t.Errorf("choose(%q, hw %v, table %v) = %d, want %d", c.env, c.hw, c.table, got, c.want)
		}
	}
	// Whatever this machine chose, Raw agrees with the definition.
	p := []byte("overlaybd zfile block")
	if Raw(Salt, p) != bitwise(Salt, p) {
		t.Fatalf("Raw with %s disagrees with bitwise", ImplementationName())
	}
}
