package zfile

import "sync"

// blockCache holds the last few decompressed blocks that were read in part. It is a
// tiny LRU: a slice scanned linearly, which beats a map for the sizes used here.
type blockCache struct {
	mu      sync.Mutex
	entries []cacheEntry // most recent last
	max     int
}

type cacheEntry struct {
	idx  int64
	data []byte
}

func newBlockCache(n int) *blockCache { return &blockCache{max: n} }

func (c *blockCache) find(idx int64) int {
	for j := len(c.entries) - 1; j >= 0; j-- {
		if c.entries[j].idx == idx {
			return j
		}
	}
	return -1
}

func (c *blockCache) has(idx int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.find(idx) >= 0
}

// get returns the block's bytes (never modified after put) or nil.
func (c *blockCache) get(idx int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	j := c.find(idx)
	if j < 0 {
		return nil
	}
	e := c.entries[j]
	if j != len(c.entries)-1 {
		copy(c.entries[j:], c.entries[j+1:])
		c.entries[len(c.entries)-1] = e
	}
	return e.data
}

func (c *blockCache) put(idx int64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.find(idx) >= 0 {
		return
	}
	if len(c.entries) >= c.max {
		copy(c.entries, c.entries[1:])
		c.entries = c.entries[:len(c.entries)-1]
	}
	c.entries = append(c.entries, cacheEntry{idx, data})
}
