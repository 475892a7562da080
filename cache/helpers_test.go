package cache

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// testData returns n deterministic pseudo-random bytes.
func testData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// memSource is an in-memory Source with fault injection and call accounting.
type memSource struct {
	data  []byte
	delay time.Duration
	// fault, if set, sees each call's result (and may change the bytes) and
	// returns the count and error to report.
	fault func(call int64, p []byte, off int64, n int) (int, error)

	calls   atomic.Int64
	bytes   atomic.Int64
	active  atomic.Int64
	maxConc atomic.Int64

	mu   sync.Mutex
	reqs [][2]int64 // off, len of each call
}

func newSource(seed uint64, n int) *memSource { return &memSource{data: testData(seed, n)} }

func (m *memSource) Size() int64 { return int64(len(m.data)) }

// ReadAtIntent is the cache's read (Source); the intent does not change the bytes.
func (m *memSource) ReadAtIntent(_ context.Context, _ blobio.Intent, p []byte, off int64) (int, error) {
	return m.ReadAt(p, off)
}

func (m *memSource) ReadAt(p []byte, off int64) (int, error) {
	call := m.calls.Add(1)
	a := m.active.Add(1)
	defer m.active.Add(-1)
	for {
		mc := m.maxConc.Load()
		if a <= mc || m.maxConc.CompareAndSwap(mc, a) {
			break
		}
	}
	m.mu.Lock()
	m.reqs = append(m.reqs, [2]int64{off, int64(len(p))})
	m.mu.Unlock()
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	m.bytes.Add(int64(n))
	var err error
	if n < len(p) {
		err = io.EOF
	}
	if m.fault != nil {
		return m.fault(call, p, off, n)
	}
	return n, err
}

func (m *memSource) requests() [][2]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][2]int64(nil), m.reqs...)
}

// testOptions are small units so that tests cover many of them quickly.
func testOptions() Options {
	return Options{RefillSize: 16 << 10, MaxFetchSize: 64 << 10, Logger: zap.NewNop()}
}

func openCache(t testing.TB, dir string, o Options) *Cache {
	t.Helper()
	c, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func openBlob(t testing.TB, c *Cache, key string, src Source) *Blob {
	t.Helper()
	b, err := c.Open(key, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// readAll reads the whole blob in pieces of n bytes and compares with want.
func readAll(t testing.TB, r io.ReaderAt, want []byte, n int) {
	t.Helper()
	buf := make([]byte, n)
	for off := 0; off < len(want); off += n {
		k, err := r.ReadAt(buf, int64(off))
		end := min(off+n, len(want))
		if k != end-off || (err != nil && !(err == io.EOF && end == len(want))) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v; want %d", n, off, k, err, end-off)
		}
		if string(buf[:k]) != string(want[off:end]) {
			t.Fatalf("ReadAt(%d, %d): wrong bytes", n, off)
		}
	}
}

// diskUsage sums st_blocks of the files in dir.
func diskUsage(t testing.TB, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		total += allocated(fi)
	}
	return total
}

const testKey = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func blobFiles(t testing.TB, dir, key string) (data, meta string) {
	t.Helper()
	base, err := fileBase(key)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, base+dataSuffix), filepath.Join(dir, base+metaSuffix)
}
