package cache

import "sync/atomic"

// unitTable maps a blob's unit index to its cached copy (nil: not known to be
// cached). It is two-level and filled lazily, so its memory grows with the units
// really cached, not with the blob size a registry or peer claims: a 4 TiB blob
// of 256 KiB units costs a 32 KiB directory until something is read.
type unitTable struct {
	n    int
	dirs []atomic.Pointer[unitChunk]
}

const unitChunkShift = 12 // 4096 units per chunk (32 KiB)

type unitChunk [1 << unitChunkShift]atomic.Pointer[unitMeta]

func newUnitTable(n int) *unitTable {
	return &unitTable{n: n, dirs: make([]atomic.Pointer[unitChunk], (n+(1<<unitChunkShift)-1)>>unitChunkShift)}
}

// len is the number of units of the blob.
func (t *unitTable) len() int { return t.n }

func (t *unitTable) load(u int) *unitMeta {
	if u < 0 || u >= t.n {
		return nil
	}
	c := t.dirs[u>>unitChunkShift].Load()
	if c == nil {
		return nil
	}
	return c[u&(1<<unitChunkShift-1)].Load()
}

// slot returns unit u's cell, allocating its chunk when create is set (else nil
// when the chunk does not exist).
func (t *unitTable) slot(u int, create bool) *atomic.Pointer[unitMeta] {
	if u < 0 || u >= t.n {
		return nil
	}
	d := &t.dirs[u>>unitChunkShift]
	c := d.Load()
	if c == nil {
		if !create {
			return nil
		}
		d.CompareAndSwap(nil, new(unitChunk))
		c = d.Load()
	}
	return &c[u&(1<<unitChunkShift-1)]
}

func (t *unitTable) store(u int, m *unitMeta) {
	if p := t.slot(u, m != nil); p != nil {
		p.Store(m)
	}
}

func (t *unitTable) compareAndSwap(u int, old, m *unitMeta) bool {
	p := t.slot(u, m != nil)
	if p == nil {
		return old == nil
	}
	return p.CompareAndSwap(old, m)
}

// count is the number of cached units.
func (t *unitTable) count() int {
	have := 0
	for i := range t.dirs {
		c := t.dirs[i].Load()
		if c == nil {
			continue
		}
		for j := range c {
			if c[j].Load() != nil {
				have++
			}
		}
	}
	return have
}
