package lsmt

import (
	"fmt"
	"sort"
)

// Merge combines the indexes of a stack of layers given top-first: levels[0] wins
// wherever it has an entry (zeroed entries included, they mask lower data), gaps are
// filled from levels[1], and so on. Each result segment's Tag is the level it came
// from, which selects the backing file. At most MaxLayers levels and MaxIndexSize
// result entries are accepted, as in the reference.
func Merge(levels [][]Segment) ([]Segment, error) {
	if len(levels) > MaxLayers {
		return nil, fmt.Errorf("lsmt: merge of %d layers, at most %d allowed", len(levels), MaxLayers)
	}
	return mergeTagged(levels, func(level int, _ Segment) uint8 { return uint8(level) })
}

// mergeTagged merges like Merge with the result tag chosen by tagOf.
func mergeTagged(levels [][]Segment, tagOf func(level int, s Segment) uint8) ([]Segment, error) {
	m := merger{levels: levels, tagOf: tagOf}
	if err := m.fill(0, 0, MaxOffset+1); err != nil {
		return nil, err
	}
	return m.out, nil
}

type merger struct {
	levels [][]Segment
	tagOf  func(int, Segment) uint8
	out    []Segment
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
		if len(m.out) >= MaxIndexSize {
			return fmt.Errorf("lsmt: merged index exceeds %d entries", MaxIndexSize)
		}
		s.Tag = m.tagOf(level, s)
		m.out = append(m.out, s)
		start = s.End()
	}
	return m.fill(level+1, start, end)
}
