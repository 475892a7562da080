package lsmt

import (
	"runtime"
	"strings"
	"testing"
)

// interleaved returns layers of n one-sector entries each that never overlap another
// layer's: a merge keeps every entry (the hostile shape of audit suspicion 4).
func interleaved(layers, n int) [][]Segment {
	levels := make([][]Segment, layers)
	for l := range levels {
		s := make([]Segment, n)
		for j := range s {
			s[j] = Segment{Offset: uint64(j*layers+l) * 2, Length: 1, MOffset: HeaderSectors + uint64(j)}
		}
		levels[l] = s
	}
	return levels
}

// A stack whose merged index would pass MaxMergedEntries fails with an error naming
// the limit, having allocated about what the limit allows rather than what the
// layers ask for.
func TestMergeLimitBoundsMemory(t *testing.T) {
	defer func(old int) { MaxMergedEntries = old }(MaxMergedEntries)
	MaxMergedEntries = 100_000
	levels := interleaved(8, 50_000) // 400k merged entries
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := Merge(levels)
	runtime.ReadMemStats(&m1)
	if err == nil || !strings.Contains(err.Error(), "exceeds 100000 entries") || !strings.Contains(err.Error(), "MaxMergedEntries") {
		t.Fatalf("merge past the limit: %v", err)
	}
	// Growth by doubling up to the limit: at most ~2x the limit's segments.
	if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > 3*100_000*24 {
		t.Errorf("a refused merge allocated %d bytes, want at most %d", alloc, 3*100_000*24)
	}
	// Within the limit the same shape merges completely.
	MaxMergedEntries = 400_000
	out, err := Merge(levels)
	if err != nil || len(out) != 400_000 {
		t.Fatalf("merge within the limit: %d entries, %v", len(out), err)
	}
	for i := 1; i < len(out); i++ {
		if out[i-1].End() > out[i].Offset || out[i].Tag != uint8(i%8) {
			t.Fatalf("entry %d: %v after %v", i, out[i], out[i-1])
		}
	}
}
