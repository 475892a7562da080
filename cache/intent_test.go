package cache

import (
	"context"
	"sync"
	"testing"

	"github.com/obd-project/obd/internal/blobio"
)

// intentSource is a memSource that records the intent of each fill.
type intentSource struct {
	*memSource
	mu   sync.Mutex
	seen map[blobio.Intent]int
}

func (s *intentSource) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	if ctx == nil {
		panic("a fill without a context")
	}
	s.mu.Lock()
	s.seen[in]++
	s.mu.Unlock()
	return s.memSource.ReadAt(p, off)
}

func (s *intentSource) count(in blobio.Intent) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[in]
}

// A fill passes the intent of the read that started it to the Source (ReadAt:
// blobio.Demand), and read-ahead fills carry blobio.ReadAhead.
func TestFillsCarryReadIntent(t *testing.T) {
	src := &intentSource{memSource: newSource(11, 8<<20), seen: map[blobio.Intent]int{}}
	o := testOptions()
	o.ReadAhead = 1 << 20
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	buf := make([]byte, 16<<10)
	if _, err := b.ReadAtIntent(context.Background(), blobio.Background, buf, 6<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadAtIntent(context.Background(), blobio.Exact, buf, 7<<20); err != nil {
		t.Fatal(err)
	}
	b.s.wg.Wait()
	if src.count(blobio.Background) != 1 || src.count(blobio.Exact) != 1 || len(src.seen) != 2 {
		t.Fatalf("fills %v; want one blobio.Background and one blobio.Exact", src.seen)
	}
	for off := int64(0); off < 1<<20; off += int64(len(buf)) { // a stream: on demand, then read-ahead
		if _, err := b.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	b.s.wg.Wait()
	if src.count(blobio.Demand) == 0 || src.count(blobio.ReadAhead) == 0 {
		t.Fatalf("fills %v; want blobio.Demand for the stream's reads and blobio.ReadAhead ahead of it", src.seen)
	}
	if _, err := b.ReadAtIntent(canceled(), blobio.Demand, buf, 5<<20); err == nil {
		t.Fatal("a read with a cancelled context began")
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
