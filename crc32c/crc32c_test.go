package crc32c

import (
	"hash/crc32"
	"math/rand"
	"testing"
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

func BenchmarkRaw64K(b *testing.B) {
	p := make([]byte, 65536)
	b.SetBytes(int64(len(p)))
	for i := 0; i < b.N; i++ {
		Raw(Salt, p)
	}
}
