package cache

import (
	"bytes"
	"sync/atomic"
	"testing"

	"github.com/obd-project/obd/zfile"
)

// A ZFile served through the cache from a source that corrupts one unit on its
// first fetch: the zfile reader's CRC check fails, it calls Evict, and the
// refetched unit reads correctly.
func TestZFileEndToEnd(t *testing.T) {
	raw := make([]byte, 400<<10)
	copy(raw, testData(30, len(raw)))
	for i := 0; i < len(raw); i += 8192 { // half of each 8 KiB compresses
		clear(raw[i : i+4096])
	}
	var zbuf bytes.Buffer
	zw, err := zfile.NewWriter(&zbuf, zfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	src := &memSource{data: zbuf.Bytes()}
	const flipAt = 100000 // inside the compressed blocks, far from the jump table
	if len(src.data) < 2*flipAt {
		t.Fatalf("zfile of %d bytes is too small for the test", len(src.data))
	}
	var flipped atomic.Int64
	src.fault = func(call int64, p []byte, off int64, n int) (int, error) {
		if off <= flipAt && flipAt < off+int64(n) && flipped.Add(1) == 1 {
			p[flipAt-off] ^= 0x40
		}
		return n, nil
	}
	o := testOptions()
	o.ReadAhead = -1
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	var _ zfile.Evicter = b
	zr, err := zfile.Open(b, b.Size(), zfile.WithName(testKey))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(raw))
	if n, err := zr.ReadAt(got, 0); n != len(raw) || err != nil {
		t.Fatalf("zfile ReadAt: %d, %v", n, err)
	}
	if !bytes.Equal(got, raw) {
		t.Fatal("zfile through the cache read wrong bytes")
	}
	st := b.Stats()
	// The bad block's range may straddle two units: both are evicted and refetched.
	if flipped.Load() != 2 || st.Evictions < 1 || st.Evictions > 2 || st.Refetches != st.Evictions {
		t.Errorf("fetches of the flipped offset %d, stats %+v; want 2 fetches, 1-2 evictions, as many refetches", flipped.Load(), st)
	}
}
