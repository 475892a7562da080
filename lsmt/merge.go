package lsmt

import (
	"fmt"
	"sort"
)

// MaxMergedEntries bounds the entries of a merged index (Merge, NewImage,
// Image.CommitSource). Each costs about 28 bytes held (a Segment and its search-tree
// key), so the default of 16M keeps a merged index under ~450 MiB. The reference's
// limit, MaxIndexSize (128M), would let a hostile stack of index-heavy layers (128 of
// 1M interleaved entries, 2 GiB of index) make one attach hold ~3.5 GiB and allocate
// several times that while growing. Raise it for unusual offline merges.
var MaxMergedEntries = 16_000_000

// Merge combines the indexes of a stack of layers given top-first: levels[0] wins
// wherever it has an entry (zeroed entries included, they mask lower data), gaps are
// filled from levels[1], and so on. Each result segment's Tag is the level it came
// from, which selects the backing file. At most MaxLayers levels (as in the reference)
// and min(MaxMergedEntries, MaxIndexSize) result entries are accepted.
func Merge(levels [][]Segment) ([]Segment, error) {
	if len(levels) > MaxLayers {
		return nil, fmt.Errorf("lsmt: merge of %d layers, at most %d allowed", len(levels), MaxLayers)
	}
	return mergeTagged(levels, func(level int, _ Segment) uint8 { return uint8(level) })
}

// mergeTagged merges like Merge with the result tag chosen by tagOf.
func mergeTagged(levels [][]Segment, tagOf func(level int, s Segment) uint8) ([]Segment, error) {
	m := merger{levels: levels, tagOf: tagOf, limit: min(MaxMergedEntries, MaxIndexSize)}
	// Most stacks merge to about as many entries as they have: start there, within the limit.
	n := 0
	for _, l := range levels {
		n += len(l)
	}
	m.out = make([]Segment, 0, min(n, m.limit, 1<<20))
	if err := m.fill(0, 0, MaxOffset+1); err != nil {
		return nil, err
	}
	return m.out, nil
}

type merger struct {
	levels [][]Segment
	tagOf  func(int, Segment) uint8
	out    []Segment
	limit  int
}

// fill emits the merged segments of sectors [start, end) from levels[level:].
func (m *merger) fill(level int, start, end uint64) error {
	if level == len(m.levels) || start >= end {
		return nil
	}
	segs := m.levels[level]
	i := sort.Search(len(segs), func(i int) bool { return segs[i].End() > start })
	for ; i < len(segs) && segs[i].Offset < end; i++ {
		s := clip(segs[i], start, end)
		if s.Offset > start {
			if err := m.fill(level+1, start, s.Offset); err != nil {
				return err
			}
		}
		if len(m.out) >= m.limit {
			return fmt.Errorf("lsmt: merged index of the stack exceeds %d entries (lsmt.MaxMergedEntries; about %d MiB of index): too many or too fragmented layers", m.limit, int64(m.limit)*28>>20)
		}
		if len(m.out) == cap(m.out) { // grow by doubling, never past the limit
			m.out = append(make([]Segment, 0, min(max(2*cap(m.out), 1024), m.limit)), m.out...)
		}
		s.Tag = m.tagOf(level, s)
		m.out = append(m.out, s)
		start = s.End()
	}
	return m.fill(level+1, start, end)
}
