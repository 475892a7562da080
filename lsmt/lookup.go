package lsmt

import "math"

// Index is an immutable sorted, non-overlapping segment list with a static search tree
// over the segment ends for fast lookup of the segment covering a sector.
//
// The tree is a B+-tree laid out implicitly in arrays (an "S-tree"): level 0 holds every
// segment end, padded to whole 16-key nodes; each higher level holds the last key of
// every node below, until one 16-key node remains. A lookup reads one node per level
// and counts the keys <= x without branches: 1M segments take 5 node reads and no
// mispredicted branch, where a binary search makes ~20 dependent, mostly missing probes.
//
// When every end is below 2^31 sectors (disks under 1 TiB) keys are 31-bit, packed two
// per uint64, so a node is one 64-byte cache line and is compared two keys per
// instruction (SWAR); otherwise keys are uint64. The segments sit in a separate array.
type Index struct {
	segs []Segment
	t32  *packedTree // used when every end < pad32
	t64  *wideTree
}

const (
	nodeKeys = 16
	pad32    = math.MaxInt32 // above every 31-bit key
	// pad64 is above every end (< 2^51) and keeps (x-k)>>63 a valid "k > x" test.
	pad64 = 1 << 62
)

// NewIndex builds the lookup structure over segs, which must be sorted and
// non-overlapping (OpenLayer and Merge guarantee it). segs is retained.
func NewIndex(segs []Segment) *Index {
	x := &Index{segs: segs}
	if len(segs) == 0 || segs[len(segs)-1].End() < pad32 {
		x.t32 = &packedTree{levels: buildLevels(segs, pad32, func(keys []uint64) []uint64 {
			p := make([]uint64, len(keys)/2)
			for i := range p {
				p[i] = keys[2*i] | keys[2*i+1]<<32
			}
			return p
		})}
	} else {
		x.t64 = &wideTree{levels: buildLevels(segs, pad64, func(keys []uint64) []uint64 { return keys })}
	}
	return x
}

// buildLevels makes the key levels, leaf first, each stored through pack.
func buildLevels(segs []Segment, pad uint64, pack func([]uint64) []uint64) [][]uint64 {
	// n+1 keys so the root always ends with a pad key: every lookup then has a node
	// whose key is > x, and the per-level count never reaches 16.
	keys := make([]uint64, roundUp(len(segs)+1, nodeKeys))
	for i, s := range segs {
		keys[i] = s.End()
	}
	for i := len(segs); i < len(keys); i++ {
		keys[i] = pad
	}
	levels := [][]uint64{pack(keys)}
	for len(keys) > nodeKeys {
		up := make([]uint64, roundUp(len(keys)/nodeKeys, nodeKeys))
		for i := range up {
			if j := i*nodeKeys + nodeKeys - 1; j < len(keys) {
				up[i] = keys[j]
			} else {
				up[i] = pad
			}
		}
		levels = append(levels, pack(up))
		keys = up
	}
	return levels
}

type packedTree struct {
	levels [][]uint64 // 8 words = 16 keys per node
}

// find returns the position of the first key > x (x < pad32). For a lane holding key k,
// (x | 1<<31) - k has bit 31 set exactly when k <= x, and never borrows from the next lane.
func (t *packedTree) find(x uint64) int {
	const hi = 1<<31 | 1<<63
	const lo = 1 | 1<<32
	xx := x | x<<32 | hi
	b := 0
	for l := len(t.levels) - 1; l >= 0; l-- {
		i := b * (nodeKeys / 2)
		w := t.levels[l][i : i+8 : i+8]
		le := ((xx-w[0])>>31)&lo + ((xx-w[1])>>31)&lo + ((xx-w[2])>>31)&lo + ((xx-w[3])>>31)&lo +
			((xx-w[4])>>31)&lo + ((xx-w[5])>>31)&lo + ((xx-w[6])>>31)&lo + ((xx-w[7])>>31)&lo
		b = b*nodeKeys + int(le&0xffffffff+le>>32)
	}
	return b
}

type wideTree struct {
	levels [][]uint64 // 16 keys per node
}

// find returns the position of the first key > x (x < pad64): (x-k)>>63 is 1 exactly
// when k > x, since keys and x are below 2^63.
func (t *wideTree) find(x uint64) int {
	b := 0
	for l := len(t.levels) - 1; l >= 0; l-- {
		i := b * nodeKeys
		k := t.levels[l][i : i+nodeKeys : i+nodeKeys]
		gt := (x-k[0])>>63 + (x-k[1])>>63 + (x-k[2])>>63 + (x-k[3])>>63 +
			(x-k[4])>>63 + (x-k[5])>>63 + (x-k[6])>>63 + (x-k[7])>>63 +
			(x-k[8])>>63 + (x-k[9])>>63 + (x-k[10])>>63 + (x-k[11])>>63 +
			(x-k[12])>>63 + (x-k[13])>>63 + (x-k[14])>>63 + (x-k[15])>>63
		b = i + nodeKeys - int(gt)
	}
	return b
}

func roundUp(n, m int) int { return (n + m - 1) / m * m }

// Segments returns the indexed segments.
func (x *Index) Segments() []Segment { return x.segs }

// Len is the number of segments.
func (x *Index) Len() int { return len(x.segs) }

// Find returns the position of the first segment whose end is > sector, or Len() if
// there is none. That segment covers sector iff its Offset <= sector.
func (x *Index) Find(sector uint64) int {
	if x.t32 != nil {
		if sector >= pad32 {
			return len(x.segs)
		}
		return x.t32.find(sector)
	}
	if sector >= pad64 {
		return len(x.segs)
	}
	return x.t64.find(sector)
}

// Lookup returns the parts of the segments covering sectors [offset, offset+length),
// trimmed to that range, in order. Holes are simply absent.
func (x *Index) Lookup(offset uint64, length uint64) []Segment {
	var out []Segment
	end := offset + length
	for i := x.Find(offset); i < len(x.segs) && x.segs[i].Offset < end; i++ {
		out = append(out, clip(x.segs[i], offset, end))
	}
	return out
}

// clip trims s to [start, end), which must overlap it.
func clip(s Segment, start, end uint64) Segment {
	if s.Offset < start {
		s = s.trimFront(start - s.Offset)
	}
	if s.End() > end {
		s.Length = uint32(end - s.Offset)
	}
	return s
}
