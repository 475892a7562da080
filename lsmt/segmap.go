package lsmt

// segmentMap is the mutable index of a writable layer ("Index0"): non-overlapping
// segments ordered by offset, where inserting a segment overwrites whatever older
// segments it overlaps (last writer wins; cut segments keep their outer parts).
//
// It is a treap with split/join, so an insert costs O(log n) plus the segments it
// removes, however large the map grows.
type segmentMap struct {
	root *smNode
	n    int
	rng  uint64
}

type smNode struct {
	seg         Segment
	prio        uint64
	left, right *smNode
}

func (m *segmentMap) nextPrio() uint64 {
	// xorshift64*; the seed only needs to be non-zero.
	if m.rng == 0 {
		m.rng = 0x9E3779B97F4A7C15
	}
	m.rng ^= m.rng >> 12
	m.rng ^= m.rng << 25
	m.rng ^= m.rng >> 27
	return m.rng * 0x2545F4914F6CDD1D
}

// split returns the nodes with offset < key and those with offset >= key.
func split(t *smNode, key uint64) (l, r *smNode) {
	if t == nil {
		return nil, nil
	}
	if t.seg.Offset < key {
		t.right, r = split(t.right, key)
		return t, r
	}
	l, t.left = split(t.left, key)
	return l, t
}

// join concatenates a and b; every offset in a is below every offset in b.
func join(a, b *smNode) *smNode {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	if a.prio > b.prio {
		a.right = join(a.right, b)
		return a
	}
	b.left = join(a, b.left)
	return b
}

func maxNode(t *smNode) *smNode {
	if t == nil {
		return nil
	}
	for t.right != nil {
		t = t.right
	}
	return t
}

func countNodes(t *smNode) int {
	if t == nil {
		return 0
	}
	return 1 + countNodes(t.left) + countNodes(t.right)
}

// Insert adds s (Length > 0), overwriting the overlapped parts of older segments.
func (m *segmentMap) Insert(s Segment) { m.replace(s, true) }

// Delete removes sectors [start, end) (cutting segments that overlap the edges):
// afterwards the range is a hole.
func (m *segmentMap) Delete(start, end uint64) {
	for start < end {
		l := min(end-start, 1<<31)
		m.replace(Segment{Offset: start, Length: uint32(l)}, false)
		start += l
	}
}

// replace removes whatever lies in s's range and, if keep, puts s there. Delete passes
// ranges longer than MaxLength: only Offset and End of s matter there.
func (m *segmentMap) replace(s Segment, keep bool) {
	left, rest := split(m.root, s.Offset)
	var tail *smNode // the part of a cut segment that lies after s
	if last := maxNode(left); last != nil && last.seg.End() > s.Offset {
		old := last.seg
		last.seg.Length = uint32(s.Offset - old.Offset)
		if old.End() > s.End() {
			tail = &smNode{seg: old.trimFront(s.End() - old.Offset), prio: m.nextPrio()}
			m.n++
		}
	}
	mid, right := split(rest, s.End())
	if last := maxNode(mid); last != nil && last.seg.End() > s.End() {
		tail = &smNode{seg: last.seg.trimFront(s.End() - last.seg.Offset), prio: m.nextPrio()}
		m.n++
	}
	m.n -= countNodes(mid)
	t := left
	if keep {
		m.n++
		t = join(t, &smNode{seg: s, prio: m.nextPrio()})
	}
	if tail != nil {
		t = join(t, tail)
	}
	m.root = join(t, right)
}

// Len is the number of segments.
func (m *segmentMap) Len() int { return m.n }

// Lookup appends to out the segments overlapping sectors [start, end), trimmed to it.
func (m *segmentMap) Lookup(start, end uint64, out []Segment) []Segment {
	return collect(m.root, start, end, out)
}

func collect(t *smNode, start, end uint64, out []Segment) []Segment {
	for t != nil {
		if t.seg.Offset > start {
			out = collect(t.left, start, end, out)
		}
		if t.seg.End() > start && t.seg.Offset < end {
			out = append(out, clip(t.seg, start, end))
		}
		if t.seg.End() >= end {
			break
		}
		t = t.right // tail loop instead of recursion on the right
	}
	return out
}

// All returns every segment in order.
func (m *segmentMap) All() []Segment {
	return m.Lookup(0, MaxOffset+1, make([]Segment, 0, m.n))
}
