package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/zfile"
)

// claimSource claims any size and serves bytes derived from the offset, holding
// no memory in proportion to the claim (a registry lying about a blob's size).
type claimSource struct{ size int64 }

func (c claimSource) Size() int64 { return c.size }
func (c claimSource) ReadAtIntent(_ context.Context, _ blobio.Intent, p []byte, off int64) (int, error) {
	for i := range p {
		p[i] = byte((off + int64(i)) * 7)
	}
	return len(p), nil
}

// A blob claiming 1 PiB is refused at Open with an error naming the blob and the
// claimed size; the refusal is counted.
func TestOversizeBlobRefused(t *testing.T) {
	c := openCache(t, t.TempDir(), testOptions())
	_, err := c.Open(testKey, claimSource{1 << 50})
	if err == nil || !strings.Contains(err.Error(), testKey) || !strings.Contains(err.Error(), "1125899906842624") {
		t.Fatalf("Open of a 1 PiB blob: %v; want an error naming the blob and its size", err)
	}
	if n := c.Stats().OversizeRefused; n != 1 {
		t.Errorf("OversizeRefused = %d, want 1", n)
	}
	if have, total := c.CachedUnits(testKey, 1<<50); have != 0 || total != 0 {
		t.Errorf("CachedUnits of a refused size: %d of %d", have, total)
	}
}

// A blob just under the bound opens and reads with allocations that follow what
// is read, not the claimed size (the unit table is filled lazily).
func TestHugeBlobAllocatesWhatIsRead(t *testing.T) {
	o := testOptions()
	o.RefillSize = DefaultRefillSize
	o.MaxFetchSize = DefaultRefillSize
	o.ReadAhead = -1
	c := openCache(t, t.TempDir(), o)
	size := int64(DefaultMaxBlobSize)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	b, err := c.Open(testKey, claimSource{size})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	buf := make([]byte, 4096)
	for _, off := range []int64{0, 1 << 30, size / 2, size - 4096} {
		if _, err := b.ReadAt(buf, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		if buf[1] != byte((off+1)*7) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
	}
	runtime.ReadMemStats(&m1)
	alloc := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("open of a %d-byte blob and 4 reads allocated %d KiB", size, alloc>>10)
	if alloc > 16<<20 {
		t.Errorf("allocated %d MiB for a few reads of a claimed %d-byte blob", alloc>>20, size)
	}
}

// hangSource never answers until released (a registry that accepts and hangs).
type hangSource struct {
	size    int64
	release chan struct{}
	group   string
	waiting atomic.Int64
}

func (h *hangSource) Size() int64        { return h.size }
func (h *hangSource) FetchGroup() string { return h.group }
func (h *hangSource) ReadAtIntent(_ context.Context, _ blobio.Intent, p []byte, off int64) (int, error) {
	h.waiting.Add(1)
	<-h.release
	return 0, errors.New("hung source released")
}

// groupSource is a memSource of a named fetch group.
type groupSource struct {
	*memSource
	group string
}

func (g groupSource) FetchGroup() string { return g.group }

// One source that hangs holds at most its own share of the fetch slots: cold
// reads of a blob of another source take about as long as without the hung one.
func TestHungSourceDoesNotStallOthers(t *testing.T) {
	o := testOptions()
	o.ReadAhead = -1
	c := openCache(t, t.TempDir(), o) // MaxFetches default
	const reads = 16
	coldReads := func(key string, seed uint64) time.Duration {
		src := groupSource{newSource(seed, reads*int(o.RefillSize)), "healthy.example"}
		src.delay = 20 * time.Millisecond
		b := openBlob(t, c, key, src)
		start := time.Now()
		var wg sync.WaitGroup
		for i := 0; i < reads; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				off := int64(i) * int64(o.RefillSize)
				buf := make([]byte, 4096)
				if _, err := b.ReadAt(buf, off); err != nil || !bytes.Equal(buf, src.data[off:off+4096]) {
					t.Errorf("read at %d: %v or wrong bytes", off, err)
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	normal := coldReads("sha256:1111111111111111111111111111111111111111111111111111111111111111", 1)

	hung := &hangSource{size: 64 << 20, release: make(chan struct{}), group: "hung.example"}
	defer close(hung.release) // also ends the test on a daemon-wide queue, where it would wait forever
	a := openBlob(t, c, "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", hung)
	for i := 0; i < 4*DefaultMaxFetches; i++ { // a deep queue of misses on the hung source
		go a.ReadAt(make([]byte, 4096), int64(i)*int64(o.MaxFetchSize))
	}
	deadline := time.Now().Add(10 * time.Second)
	for hung.waiting.Load() < DefaultMaxFetches && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	done := make(chan time.Duration, 1)
	go func() {
		done <- coldReads("sha256:2222222222222222222222222222222222222222222222222222222222222222", 2)
	}()
	select {
	case took := <-done:
		t.Logf("%d cold reads: %v alone, %v while another source hangs (%d of its reads waiting in it)", reads, normal, took, hung.waiting.Load())
		if took > 2*normal+200*time.Millisecond {
			t.Errorf("cold reads took %v with a hung source, %v without", took, normal)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("cold reads of a healthy source still waiting after 10 s behind a hung one (%v alone)", normal)
	}
}

// zfileBlob compresses a test image and returns it with the compressed offset of
// block k.
func zfileBlob(t *testing.T, seed uint64, size int, k int) (raw, z []byte, blockOff int64) {
	t.Helper()
	raw = make([]byte, size)
	copy(raw, testData(seed, len(raw)))
	for i := 0; i < len(raw); i += 8192 {
		clear(raw[i : i+4096])
	}
	var zbuf bytes.Buffer
	zw, err := zfile.NewWriter(&zbuf, zfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	z = zbuf.Bytes()
	zr, err := zfile.Open(bytes.NewReader(z), int64(len(z)))
	if err != nil {
		t.Fatal(err)
	}
	info := zr.Info()
	blockOff = 512
	for i := 0; i < k; i++ {
		blockOff += int64(binary.LittleEndian.Uint32(z[info.IndexOffset+int64(4*i):]))
	}
	return raw, z, blockOff
}

// One corrupted fetch read by many requests at once: every request reads the
// right bytes, the unit is evicted and refetched once, and the others' Evicts
// (of the copy already dropped) leave the good refetched copy alone.
func TestConcurrentReadersEvictOnce(t *testing.T) {
	for round := 0; round < 10; round++ {
		const k = 101
		raw, z, blockOff := zfileBlob(t, 32, 1<<20, k)
		bad := blockOff + 100
		var once atomic.Bool
		src := &memSource{data: z, delay: 20 * time.Millisecond} // the requests share one fetch
		src.fault = func(call int64, p []byte, o int64, n int) (int, error) {
			if o <= bad && bad < o+int64(n) && once.CompareAndSwap(false, true) {
				p[bad-o] ^= 0x5a
			}
			return n, nil
		}
		o := testOptions()
		o.ReadAhead = -1
		c := openCache(t, t.TempDir(), o)
		b := openBlob(t, c, testKey, src)
		zr, err := zfile.Open(b, b.Size(), zfile.WithBlockCache(0))
		if err != nil {
			t.Fatal(err)
		}
		var start, wg sync.WaitGroup
		start.Add(1)
		var fails atomic.Int64
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				buf := make([]byte, 4096)
				if _, err := zr.ReadAt(buf, k*4096); err != nil {
					if fails.Add(1) == 1 {
						t.Errorf("round %d: %v", round, err)
					}
				} else if !bytes.Equal(buf, raw[k*4096:(k+1)*4096]) {
					t.Error("wrong bytes")
				}
			}()
		}
		start.Done()
		wg.Wait()
		st := b.Stats()
		if fails.Load() > 0 || st.Evictions != 1 || st.Refetches != 1 {
			t.Fatalf("round %d: one corrupted fetch, 16 concurrent reads: %d failed; stats %+v; want 1 eviction, 1 refetch",
				round, fails.Load(), st)
		}
	}
}

// A source corrupting each unit's first fetch, random concurrent ZFile reads:
// self-healing never fails a read (the audit's random workload).
func TestConcurrentSelfHeal(t *testing.T) {
	raw, z, _ := zfileBlob(t, 31, 2<<20, 0)
	for round := 0; round < 8; round++ {
		src := &memSource{data: z}
		var seen sync.Map
		o := testOptions()
		o.ReadAhead = -1
		us := int64(o.RefillSize)
		src.fault = func(call int64, p []byte, off int64, n int) (int, error) {
			for u := off / us; u*us < off+int64(n); u++ {
				if _, dup := seen.LoadOrStore(u, true); !dup && u > 0 && (u+1)*us < int64(len(src.data))-int64(64<<10) {
					if i := u*us + us/2 - off; i >= 0 && i < int64(n) {
						p[i] ^= 0x5a
					}
				}
			}
			return n, nil
		}
		c := openCache(t, t.TempDir(), o)
		b := openBlob(t, c, testKey, src)
		zr, err := zfile.Open(b, b.Size(), zfile.WithBlockCache(0))
		if err != nil {
			t.Fatal(err)
		}
		var fails atomic.Int64
		var wg sync.WaitGroup
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 60; i++ {
					l := 4096 * (1 + (g+i)%8)
					off := (int64(g*7919+i*104729) % int64(len(raw)-l)) &^ 4095
					buf := make([]byte, l)
					if _, err := zr.ReadAt(buf, off); err != nil {
						if fails.Add(1) == 1 {
							t.Errorf("round %d: %v", round, err)
						}
					} else if !bytes.Equal(buf, raw[off:off+int64(l)]) {
						t.Errorf("round %d: wrong bytes at %d", round, off)
					}
				}
			}()
		}
		wg.Wait()
		if fails.Load() > 0 {
			t.Fatalf("round %d: %d reads failed; stats %+v", round, fails.Load(), b.Stats())
		}
	}
}

// A read racing with Evict, between the unit's removal from memory and the
// clearing of its record, must not adopt the old record (its record lock on the
// shared descriptor does not exclude Evict's): it gets the refetched bytes.
func TestEvictExcludesAdoptingFill(t *testing.T) {
	src := newSource(40, 64<<10)
	o := testOptions()
	o.ReadAhead = -1
	var bad atomic.Bool
	bad.Store(true)
	src.fault = func(call int64, p []byte, off int64, n int) (int, error) {
		if bad.Load() && off == 0 {
			p[10] ^= 0xff // the first fetch of unit 0 is corrupt
		}
		return n, nil
	}
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	buf := make([]byte, 64)
	if _, err := b.ReadAt(buf, 0); err != nil || buf[10] == src.data[10] {
		t.Fatalf("first read: %v (corruption injected: %v)", err, buf[10] != src.data[10])
	}
	bad.Store(false)
	got := make(chan []byte, 1)
	evictHook = func() {
		go func() {
			p := make([]byte, 64)
			if _, err := b.ReadAt(p, 0); err != nil {
				t.Error(err)
			}
			got <- p
		}()
		select { // give the racing read time to go wrong (it waits for the drop when right)
		case p := <-got:
			got <- p
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer func() { evictHook = nil }()
	if err := b.Evict(0, 64); err != nil {
		t.Fatal(err)
	}
	evictHook = nil
	if p := <-got; !bytes.Equal(p, src.data[:64]) {
		t.Fatal("a read racing with Evict returned the evicted bytes")
	}
	if _, err := b.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, src.data[:64]) {
		t.Fatalf("read after Evict: %v or wrong bytes", err)
	}
}

// The eviction scan (every record of every blob) runs without the directory
// lock: another process's fills, which need the lock, go on meanwhile.
func TestEvictionScanDoesNotHoldDirectoryLock(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	o.Capacity, o.MaxFetchSize, o.ReadAhead = 128<<10, o.RefillSize, -1
	c := openCache(t, dir, o)
	other := openCache(t, dir, o) // another process's cache on the same directory
	src := newSource(41, 512<<10)
	b := openBlob(t, c, testKey, src)
	blocked := make(chan bool, 1)
	var once sync.Once
	scanHook = func() {
		once.Do(func() {
			done := make(chan struct{})
			go func() {
				other.Usage() // takes the directory lock, as a fill's accounting does
				close(done)
			}()
			select {
			case <-done:
				blocked <- false
			case <-time.After(time.Second):
				blocked <- true
			}
		})
	}
	defer func() { scanHook = nil }()
	readAll(t, b, src.data, 16<<10) // four times the capacity: evicts
	scanHook = nil
	select {
	case b := <-blocked:
		if b {
			t.Error("the directory lock was held during the eviction scan")
		}
	default:
		t.Fatal("no eviction scan")
	}
	if u := diskUsage(t, dir); u > o.Capacity+int64(o.RefillSize) {
		t.Errorf("usage %d over the capacity %d", u, o.Capacity)
	}
}
