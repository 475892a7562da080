package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obd-project/obd/internal/blobio"
)

func TestRandomConcurrentReads(t *testing.T) {
	src := newSource(1, 1<<20+1234)
	o := testOptions()
	o.MaxFetches = 3
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for i := 0; i < 300; i++ {
				off := r.Int64N(b.Size() + 100)
				buf := make([]byte, 1+r.IntN(3*o.RefillSize))
				n, err := b.ReadAt(buf, off)
				wantN := int(max(0, min(int64(len(buf)), b.Size()-off)))
				if n != wantN {
					errs <- fmt.Errorf("ReadAt(%d, %d) = %d, %v; want %d bytes", len(buf), off, n, err, wantN)
					return
				}
				if wantN < len(buf) && err != io.EOF || wantN == len(buf) && err != nil {
					errs <- fmt.Errorf("ReadAt(%d, %d): error %v", len(buf), off, err)
					return
				}
				if n > 0 && string(buf[:n]) != string(src.data[off:off+int64(n)]) {
					errs <- fmt.Errorf("ReadAt(%d, %d): wrong bytes", len(buf), off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st := b.Stats(); st.BytesFetched > src.Size()+int64(o.RefillSize) || st.Hits == 0 {
		t.Errorf("stats %+v: each unit should be fetched once and hits should occur", st)
	}
}

func TestReadEdges(t *testing.T) {
	src := newSource(2, 100<<10+7)
	c := openCache(t, t.TempDir(), testOptions())
	b := openBlob(t, c, testKey, src)
	buf := make([]byte, 64)
	if n, err := b.ReadAt(buf, b.Size()); n != 0 || err != io.EOF {
		t.Errorf("read at Size: %d, %v; want 0, EOF", n, err)
	}
	if n, err := b.ReadAt(buf, b.Size()+5000); n != 0 || err != io.EOF {
		t.Errorf("read past Size: %d, %v; want 0, EOF", n, err)
	}
	if n, err := b.ReadAt(buf, b.Size()-10); n != 10 || err != io.EOF || string(buf[:10]) != string(src.data[len(src.data)-10:]) {
		t.Errorf("read across Size: %d, %v; want 10, EOF", n, err)
	}
	if _, err := b.ReadAt(buf, -1); err == nil {
		t.Error("negative offset: no error")
	}
	if n, err := b.ReadAt(nil, 5); n != 0 || err != nil {
		t.Errorf("empty read: %d, %v", n, err)
	}
	// An empty blob.
	e := openBlob(t, c, "sha256:empty", &memSource{})
	if n, err := e.ReadAt(buf, 0); n != 0 || err != io.EOF {
		t.Errorf("empty blob: %d, %v; want 0, EOF", n, err)
	}
}

func TestSingleFlight(t *testing.T) {
	src := newSource(3, 256<<10)
	src.delay = 50 * time.Millisecond
	o := testOptions()
	o.ReadAhead = -1
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 100)
			off := int64(40<<10 + g*50)
			if _, err := b.ReadAt(buf, off); err != nil || string(buf) != string(src.data[off:off+100]) {
				t.Errorf("reader %d: %v or wrong bytes", g, err)
			}
		}()
	}
	wg.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Errorf("16 readers of one cold unit made %d source calls, want 1", n)
	}
}

func TestCoalescing(t *testing.T) {
	src := newSource(4, 2<<20)
	o := testOptions()
	o.RefillSize, o.MaxFetchSize, o.ReadAhead = 64<<10, 256<<10, -1
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	// Unit 1 cached first: the 1 MiB read below then misses units 0 and 2..15.
	if _, err := b.ReadAt(make([]byte, 10), 64<<10); err != nil {
		t.Fatal(err)
	}
	readAll(t, io.NewSectionReader(b, 0, 1<<20), src.data[:1<<20], 1<<20)
	want := [][2]int64{{64 << 10, 64 << 10}, {0, 64 << 10}, {128 << 10, 256 << 10}, {384 << 10, 256 << 10}, {640 << 10, 256 << 10}, {896 << 10, 128 << 10}}
	got := src.requests()
	if len(got) != len(want) {
		t.Fatalf("source requests %v, want %v", got, want)
	}
	seen := map[[2]int64]bool{}
	for _, r := range got {
		seen[r] = true
	}
	for _, r := range want {
		if !seen[r] {
			t.Errorf("no coalesced request %v among %v", r, got)
		}
	}
}

func TestBoundedFetchPool(t *testing.T) {
	src := newSource(5, 1<<20)
	src.delay = 10 * time.Millisecond
	o := testOptions()
	o.MaxFetches, o.ReadAhead = 2, -1
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	var wg sync.WaitGroup
	for u := 0; u < 16; u++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(u) * 64 << 10
			buf := make([]byte, 4096)
			if _, err := b.ReadAt(buf, off); err != nil || string(buf) != string(src.data[off:off+4096]) {
				t.Errorf("unit %d: %v or wrong bytes", u, err)
			}
		}()
	}
	wg.Wait()
	if m := src.maxConc.Load(); m > 2 || m < 1 {
		t.Errorf("max concurrent source reads %d, want 1..2", m)
	}
	if n := src.calls.Load(); n != 16 {
		t.Errorf("%d source calls, want 16", n)
	}
}

// One sequential stream over a 50 ms link: read-ahead must not be limited to one
// refill per round trip.
func TestReadAheadSpeedup(t *testing.T) {
	run := func(ra int64) (time.Duration, int64) {
		src := newSource(6, 2<<20)
		src.delay = 50 * time.Millisecond
		o := testOptions()
		o.RefillSize, o.MaxFetchSize, o.ReadAhead = 64<<10, 1<<20, ra
		c := openCache(t, t.TempDir(), o)
		b := openBlob(t, c, testKey, src)
		start := time.Now()
		readAll(t, b, src.data, 64<<10)
		return time.Since(start), src.calls.Load()
	}
	slow, slowCalls := run(-1)
	fast, fastCalls := run(1 << 20)
	t.Logf("no read-ahead: %v, %d calls; read-ahead 1 MiB: %v, %d calls", slow, slowCalls, fast, fastCalls)
	if slowCalls != 32 {
		t.Errorf("without read-ahead: %d calls, want 32", slowCalls)
	}
	if fastCalls > 10 || fast*3 > slow {
		t.Errorf("read-ahead: %v and %d calls vs %v and %d without", fast, fastCalls, slow, slowCalls)
	}
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	src := newSource(7, 300<<10+5)
	c := openCache(t, dir, testOptions())
	b := openBlob(t, c, testKey, src)
	readAll(t, b, src.data, 10000)
	b.Close()
	c.Close()

	src2 := &memSource{data: src.data}
	c2 := openCache(t, dir, testOptions())
	if u, _ := c2.Usage(); u < src.Size() {
		t.Errorf("usage after reopen %d, want at least %d", u, src.Size())
	}
	b2 := openBlob(t, c2, testKey, src2)
	readAll(t, b2, src.data, 7000)
	if n := src2.calls.Load(); n != 0 {
		t.Errorf("reopened cache made %d source calls, want 0", n)
	}
	if st := b2.Stats(); st.Misses != 0 || st.Hits == 0 {
		t.Errorf("stats after reopen %+v", st)
	}
	// Another refill size invalidates the entry instead of misreading it.
	o := testOptions()
	o.RefillSize = 32 << 10
	c3 := openCache(t, dir, o)
	b2.Close()
	src3 := &memSource{data: src.data}
	b3 := openBlob(t, c3, testKey, src3)
	readAll(t, b3, src.data, 7000)
	if n := src3.calls.Load(); n == 0 {
		t.Error("entry written with another unit size was served")
	}
}

// Damage behind the cache's back, between runs: detected, refetched, never served.
func TestTornEntries(t *testing.T) {
	const unit = 16 << 10
	cases := []struct {
		name   string
		damage func(t *testing.T, data, meta string)
		calls  func(n int64) bool // acceptable source calls to re-read everything
	}{
		{"flipped data byte", func(t *testing.T, data, meta string) {
			patch(t, data, 3*unit+100, func(b []byte) { b[0] ^= 0x10 })
		}, func(n int64) bool { return n == 1 }},
		{"zeroed data page", func(t *testing.T, data, meta string) {
			patch(t, data, 5*unit+4096, func(b []byte) { clear(b[:4096]) })
		}, func(n int64) bool { return n == 1 }},
		{"data file truncated", func(t *testing.T, data, meta string) {
			if err := os.Truncate(data, 10*unit+77); err != nil {
				t.Fatal(err)
			}
		}, func(n int64) bool { return n == 10 }}, // units 10..19, read one at a time
		{"record CRC", func(t *testing.T, data, meta string) {
			patch(t, meta, recordOffset(2, unit), func(b []byte) { b[0] ^= 1 })
		}, func(n int64) bool { return n == 1 }},
		{"record page CRC", func(t *testing.T, data, meta string) {
			patch(t, meta, recordOffset(4, unit)+recHeadSize+8, func(b []byte) { b[0] ^= 1 })
		}, func(n int64) bool { return n == 1 }},
		{"meta truncated mid-record", func(t *testing.T, data, meta string) {
			if err := os.Truncate(meta, recordOffset(12, unit)+7); err != nil {
				t.Fatal(err)
			}
		}, func(n int64) bool { return n >= 1 && n <= 8 }},
		{"header garbage", func(t *testing.T, data, meta string) {
			patch(t, meta, 12, func(b []byte) { b[0] ^= 0xff })
		}, func(n int64) bool { return n >= 5 }},
		{"meta removed", func(t *testing.T, data, meta string) {
			if err := os.Remove(meta); err != nil {
				t.Fatal(err)
			}
		}, func(n int64) bool { return n >= 5 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := newSource(8, 20*unit-3)
			o := testOptions()
			o.ReadAhead = -1
			c := openCache(t, dir, o)
			b := openBlob(t, c, testKey, src)
			readAll(t, b, src.data, 64<<10)
			b.Close()
			data, meta := blobFiles(t, dir, testKey)
			tc.damage(t, data, meta)

			src2 := &memSource{data: src.data}
			c2 := openCache(t, dir, o)
			b2 := openBlob(t, c2, testKey, src2)
			readAll(t, b2, src.data, 5000)
			if n := src2.calls.Load(); !tc.calls(n) {
				t.Errorf("%d source calls to recover", n)
			}
			// Healed: a third pass is served locally.
			before := src2.calls.Load()
			readAll(t, b2, src.data, 5000)
			if n := src2.calls.Load() - before; n != 0 {
				t.Errorf("after healing: %d more source calls", n)
			}
		})
	}
}

func patch(t *testing.T, path string, off int64, fn func([]byte)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 8192)
	n, _ := f.ReadAt(b, off)
	fn(b[:n])
	if _, err := f.WriteAt(b[:n], off); err != nil {
		t.Fatal(err)
	}
}

// Damage while the blob is open (another process, a disk error): the next read
// of the page fails its check and is refetched.
func TestCorruptionWhileOpen(t *testing.T) {
	dir := t.TempDir()
	src := newSource(9, 128<<10)
	o := testOptions()
	o.ReadAhead = -1
	c := openCache(t, dir, o)
	b := openBlob(t, c, testKey, src)
	readAll(t, b, src.data, 16<<10)
	data, _ := blobFiles(t, dir, testKey)
	patch(t, data, 40000, func(p []byte) { p[0] ^= 0xff })
	before := src.calls.Load()
	readAll(t, b, src.data, 1000)
	if st := b.Stats(); st.ChecksumFailures != 1 || src.calls.Load()-before != 1 {
		t.Errorf("stats %+v, %d new calls; want 1 checksum failure and 1 refetch", st, src.calls.Load()-before)
	}
}

func TestCapacity(t *testing.T) {
	dir := t.TempDir()
	const unit = 16 << 10
	o := testOptions()
	o.Capacity, o.MaxFetchSize, o.ReadAhead = 256<<10, unit, -1
	c := openCache(t, dir, o)
	srcA, srcB := newSource(10, 1<<20), newSource(11, 512<<10)
	a := openBlob(t, c, testKey, srcA)
	bb := openBlob(t, c, "sha256:other", srcB)
	check := func(when string) {
		t.Helper()
		if u := diskUsage(t, dir); u > o.Capacity+unit {
			t.Fatalf("%s: usage %d > capacity %d + one unit", when, u, o.Capacity)
		}
	}
	readAll(t, a, srcA.data, 20000)
	check("after blob A")
	readAll(t, bb, srcB.data, 20000)
	check("after blob B")
	// LRU: the last units read are still cached, the first are not.
	before := srcB.calls.Load()
	readAll(t, io.NewSectionReader(bb, 448<<10, 64<<10), srcB.data[448<<10:], 4096)
	if n := srcB.calls.Load() - before; n != 0 {
		t.Errorf("most recent units refetched (%d calls)", n)
	}
	before = srcA.calls.Load()
	readAll(t, a, srcA.data, 50000) // evicted data refetches correctly
	if srcA.calls.Load() == before {
		t.Error("blob A was not evicted at all")
	}
	check("after rereading A")
	if u, err := c.Usage(); err != nil || u > o.Capacity+unit {
		t.Errorf("Usage() = %d, %v", u, err)
	}
	// Usage is rebuilt at start from the files.
	c2 := openCache(t, dir, o)
	if u, _ := c2.Usage(); u != diskUsage(t, dir)-0 && u <= 0 {
		t.Errorf("usage after reopen %d", u)
	}
}

func TestSourceErrorIsolated(t *testing.T) {
	src := newSource(12, 256<<10)
	var fail sync.Map
	boom := errors.New("registry said 503")
	src.fault = func(call int64, p []byte, off int64, n int) (int, error) {
		if _, ok := fail.Load(off); ok {
			return 0, boom
		}
		return n, nil
	}
	o := testOptions()
	o.ReadAhead, o.MaxFetchSize = -1, o.RefillSize
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	fail.Store(int64(5*o.RefillSize), true)
	buf := make([]byte, 3*o.RefillSize)
	n, err := b.ReadAt(buf, int64(4*o.RefillSize))
	if !errors.Is(err, boom) || n != o.RefillSize {
		t.Fatalf("read over the failing unit: %d, %v; want %d, wrapped source error", n, err, o.RefillSize)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(5*o.RefillSize)) {
		t.Errorf("error %q does not name the range", err)
	}
	readAll(t, io.NewSectionReader(b, 0, int64(5*o.RefillSize)), src.data[:5*o.RefillSize], 1000)
	readAll(t, io.NewSectionReader(b, int64(6*o.RefillSize), 1<<20), src.data[6*o.RefillSize:], 1000)
	fail.Delete(int64(5 * o.RefillSize)) // errors are not cached
	readAll(t, b, src.data, 4096)
}

func TestShortSourceRead(t *testing.T) {
	src := newSource(13, 64<<10)
	src.fault = func(call int64, p []byte, off int64, n int) (int, error) {
		if call == 1 {
			return n / 2, nil
		}
		return n, nil
	}
	o := testOptions()
	o.ReadAhead = -1
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	buf := make([]byte, 100)
	if n, err := b.ReadAt(buf, 10000); err == nil || !strings.Contains(err.Error(), "short read") || n != 0 {
		t.Fatalf("short source read: %d, %v; want an error", n, err)
	}
	readAll(t, b, src.data, 3000)
}

func TestEvictBoundedRefetch(t *testing.T) {
	src := newSource(14, 128<<10)
	o := testOptions()
	o.ReadAhead, o.MaxFetchSize, o.MaxRefetches = -1, o.RefillSize, 3
	bad := int64(2 * o.RefillSize)
	src.fault = func(call int64, p []byte, off int64, n int) (int, error) {
		if off == bad {
			p[7] ^= 1 // a permanently bad source for unit 2
		}
		return n, nil
	}
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	buf := make([]byte, 64)
	var err error
	reads := 0
	for ; reads < 20; reads++ {
		if _, err = b.ReadAt(buf, bad); err != nil {
			break
		}
		if buf[7] == src.data[bad+7] {
			t.Fatal("source fault not injected")
		}
		if err := b.Evict(bad, 64); err != nil {
			t.Fatal(err)
		}
	}
	if !errors.Is(err, ErrRefetchLimit) || reads != 4 {
		t.Fatalf("after %d reads: %v; want ErrRefetchLimit after 4 reads", reads, err)
	}
	if st := b.Stats(); st.Refetches != 3 || st.Evictions != 4 {
		t.Errorf("stats %+v", st)
	}
	unitCalls := 0
	for _, r := range src.requests() {
		if r[0] == bad {
			unitCalls++
		}
	}
	if unitCalls != 4 {
		t.Errorf("%d fetches of the bad unit, want 4", unitCalls)
	}
	// Other units are unaffected.
	readAll(t, io.NewSectionReader(b, 0, bad), src.data[:bad], 5000)
	// Evict of a range outside the blob is a no-op; negative is an error.
	if err := b.Evict(b.Size()+10, 10); err != nil {
		t.Error(err)
	}
	if err := b.Evict(-1, 10); err == nil {
		t.Error("negative evict: no error")
	}
}

func TestEvictRefetches(t *testing.T) {
	dir := t.TempDir()
	src := newSource(15, 100<<10)
	o := testOptions()
	o.ReadAhead = -1
	c := openCache(t, dir, o)
	b := openBlob(t, c, testKey, src)
	readAll(t, b, src.data, 8192)
	usage := diskUsage(t, dir)
	if err := b.Evict(20000, 30000); err != nil { // units 1..3
		t.Fatal(err)
	}
	if u := diskUsage(t, dir); u >= usage {
		t.Errorf("evict freed nothing: %d -> %d", usage, u)
	}
	before := src.calls.Load()
	readAll(t, b, src.data, 8192)
	if n := src.calls.Load() - before; n < 1 || n > 3 {
		t.Errorf("%d calls to refetch 3 evicted units", n)
	}
}

func TestSharedHandles(t *testing.T) {
	src := newSource(16, 64<<10)
	c := openCache(t, t.TempDir(), testOptions())
	b1 := openBlob(t, c, testKey, src)
	b2 := openBlob(t, c, testKey, src)
	readAll(t, b1, src.data, 4096)
	b1.Close()
	readAll(t, b2, src.data, 4096)
	if n := src.calls.Load(); n > 4 {
		t.Errorf("%d calls for 4 units through two handles", n)
	}
	if _, err := b1.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if _, err := c.Open(testKey, newSource(1, 10)); err == nil {
		t.Error("same key with another size: no error")
	}
}

func TestFileBase(t *testing.T) {
	keys := []string{"sha256:ab", "sha256_3aab", "sha256/ab", "../x", ".", "a", strings.Repeat("k", 300), strings.Repeat("k", 299) + "j"}
	seen := map[string]string{}
	for _, k := range keys {
		b, err := fileBase(k)
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsAny(b, "/.") || len(b) > 220 {
			t.Errorf("fileBase(%q) = %q", k, b)
		}
		if o, dup := seen[b]; dup {
			t.Errorf("keys %q and %q share %q", o, k, b)
		}
		seen[b] = k
	}
	if _, err := fileBase(""); err == nil {
		t.Error("empty key accepted")
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{{RefillSize: 3000}, {RefillSize: 6 << 10}, {RefillSize: 32 << 20}, {Capacity: -1}} {
		if _, err := Open(t.TempDir(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// Two Cache instances on one directory have their own descriptors, so their OFD
// locks conflict as two processes' would: a unit one of them fills is adopted
// (verified) by the other instead of fetched again, even when both miss at once.
func TestTwoCachesShareFills(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	o.ReadAhead, o.MaxFetchSize = -1, o.RefillSize
	src1 := newSource(17, 20*o.RefillSize)
	src1.delay = 30 * time.Millisecond
	src2 := &memSource{data: src1.data, delay: 30 * time.Millisecond}
	c1, c2 := openCache(t, dir, o), openCache(t, dir, o)
	b1, b2 := openBlob(t, c1, testKey, src1), openBlob(t, c2, testKey, src2)
	var wg sync.WaitGroup
	for _, b := range []*Blob{b1, b2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			readAll(t, b, src1.data, 1000)
		}()
	}
	wg.Wait()
	if n := src1.calls.Load() + src2.calls.Load(); n != 20 {
		t.Errorf("%d + %d source calls for 20 units read by two caches, want 20 in all", src1.calls.Load(), src2.calls.Load())
	}
	// What one filled, the other serves without fetching.
	src3 := &memSource{data: src1.data}
	c3 := openCache(t, dir, o)
	b4 := openBlob(t, c3, testKey, src3)
	readAll(t, b4, src1.data, 5000)
	if n := src3.calls.Load(); n != 0 {
		t.Errorf("third cache fetched %d times", n)
	}
}

// Hits are recorded in the unit records, so LRU order survives a restart (and is
// seen by other processes' eviction scans).
func TestLRUAcrossRestart(t *testing.T) {
	old := stampInterval
	stampInterval = 0
	defer func() { stampInterval = old }()
	dir := t.TempDir()
	o := testOptions()
	o.ReadAhead, o.MaxFetchSize = -1, o.RefillSize
	src := newSource(18, 16*o.RefillSize)
	c := openCache(t, dir, o)
	b := openBlob(t, c, testKey, src)
	for u := 0; u < 16; u++ { // fill in order: unit 0 is the oldest fill
		readAll(t, io.NewSectionReader(b, int64(u*o.RefillSize), int64(o.RefillSize)), src.data[u*o.RefillSize:(u+1)*o.RefillSize], 4096)
		time.Sleep(time.Millisecond)
	}
	readAll(t, io.NewSectionReader(b, 0, int64(o.RefillSize)), src.data[:o.RefillSize], 4096) // a hit makes it the newest
	b.Close()
	c.Close()

	o.Capacity = diskUsage(t, dir) // full: the next fill evicts
	c2 := openCache(t, dir, o)
	other := newSource(19, 4*o.RefillSize)
	readAll(t, openBlob(t, c2, "sha256:other", other), other.data, 4096)
	src2 := &memSource{data: src.data}
	b2 := openBlob(t, c2, testKey, src2)
	readAll(t, io.NewSectionReader(b2, 0, int64(o.RefillSize)), src.data[:o.RefillSize], 4096)
	if n := src2.calls.Load(); n != 0 {
		t.Error("the most recently read unit was evicted after restart")
	}
	readAll(t, io.NewSectionReader(b2, int64(o.RefillSize), int64(o.RefillSize)), src.data[o.RefillSize:2*o.RefillSize], 4096)
	if n := src2.calls.Load(); n != 1 {
		t.Error("the least recently used unit was not evicted")
	}
}

// A stream whose requests arrive pairwise swapped (queue depth 2) is still
// recognised as sequential.
func TestReadAheadReordered(t *testing.T) {
	src := newSource(23, 2<<20)
	o := testOptions()
	o.RefillSize, o.MaxFetchSize, o.ReadAhead = 64<<10, 1<<20, 1<<20
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	const n = 32 << 10
	for off := int64(0); off < src.Size(); off += 2 * n {
		readAll(t, io.NewSectionReader(b, off+n, n), src.data[off+n:off+2*n], n)
		readAll(t, io.NewSectionReader(b, off, n), src.data[off:off+n], n)
	}
	if calls := src.calls.Load(); calls > 8 {
		t.Errorf("%d source calls for a reordered sequential read of 32 units", calls)
	}
}

// A short sequential stream (a file read through a file system) must not pull a
// large read-ahead window: the window grows with the stream.
func TestReadAheadWindowGrows(t *testing.T) {
	src := newSource(8, 64<<20)
	o := testOptions()
	o.RefillSize, o.MaxFetchSize, o.ReadAhead = 64<<10, 4<<20, 32<<20
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	fetched := func() int64 {
		var n int64
		for _, r := range src.requests() {
			n += r[1]
		}
		return n
	}
	buf := make([]byte, 128<<10)
	read := func(from, n int64) {
		for off := from; off < from+n; off += int64(len(buf)) {
			if _, err := b.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
			if string(buf) != string(src.data[off:off+int64(len(buf))]) {
				t.Fatalf("wrong bytes at %d", off)
			}
		}
	}
	read(0, 2<<20) // a 2 MiB "file"
	time.Sleep(100 * time.Millisecond)
	b.s.wg.Wait()
	short := fetched()
	// At most the stream, a window of the stream's length, and a fill's rounding.
	if short > 2*(2<<20)+int64(o.MaxFetchSize) {
		t.Errorf("a 2 MiB stream fetched %d bytes", short)
	}
	read(8<<20, 40<<20) // a long stream: the window reaches ReadAhead
	b.s.wg.Wait()
	long := fetched() - short
	if long < 40<<20+8<<20 {
		t.Errorf("a 40 MiB stream fetched only %d bytes: the window did not grow", long)
	}
	t.Logf("2 MiB stream fetched %d bytes; 40 MiB stream %d", short, long)
}

// Capacity evictions of units of a blob that is not open count in Stats too
// (obd_cache_evictions_total), as many as the units that must be fetched again.
func TestEvictionsOfClosedBlobsCounted(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	o.ReadAhead, o.MaxFetchSize = -1, o.RefillSize
	src := newSource(20, 16*o.RefillSize)
	c := openCache(t, dir, o)
	b := openBlob(t, c, testKey, src)
	readAll(t, b, src.data, 4096)
	b.Close()
	c.Close()

	o.Capacity = diskUsage(t, dir) // full: the next fill evicts
	c2 := openCache(t, dir, o)
	other := newSource(21, 4*o.RefillSize)
	readAll(t, openBlob(t, c2, "sha256:other", other), other.data, 4096)
	evicted := c2.Stats().Evictions
	// Count what is missing through a cache with room (refills evict nothing).
	o.Capacity = 0
	c3 := openCache(t, dir, o)
	src2 := &memSource{data: src.data}
	readAll(t, openBlob(t, c3, testKey, src2), src.data, 4096)
	refetched := src2.calls.Load()
	if refetched == 0 {
		t.Fatal("nothing of the closed blob was evicted: the test proves nothing")
	}
	if evicted != refetched {
		t.Errorf("Stats().Evictions = %d after evicting %d units of a closed blob", evicted, refetched)
	}
}

// A stream over units cached by other reads (a trace replay, an earlier run)
// fetches nothing more; once it misses, read-ahead starts; exact reads
// (blobio.Intent.Exact) never read ahead.
func TestReadAheadOnlyWhileFetching(t *testing.T) {
	src := newSource(9, 32<<20)
	o := testOptions()
	o.RefillSize, o.MaxFetchSize, o.ReadAhead = 64<<10, 4<<20, 16<<20
	c := openCache(t, t.TempDir(), o)
	b := openBlob(t, c, testKey, src)
	buf := make([]byte, 128<<10)
	read := func(in blobio.Intent, from, n int64) {
		for off := from; off < from+n; off += int64(len(buf)) {
			if _, err := b.ReadAtIntent(context.Background(), in, buf, off); err != nil {
				t.Fatal(err)
			}
			if string(buf) != string(src.data[off:off+int64(len(buf))]) {
				t.Fatalf("wrong bytes at %d", off)
			}
		}
		b.s.wg.Wait()
	}
	read(blobio.Background, 0, 4<<20) // a replay: exactly 4 MiB
	if got := src.bytes.Load(); got != 4<<20 {
		t.Fatalf("exact reads of 4 MiB fetched %d bytes", got)
	}
	read(blobio.Demand, 0, 4<<20) // a stream over them: all hits
	if got := src.bytes.Load(); got != 4<<20 {
		t.Fatalf("a stream over cached units fetched %d more bytes", got-4<<20)
	}
	read(blobio.Demand, 4<<20, 2<<20) // it goes on into uncached data
	if got := src.bytes.Load(); got <= 6<<20 {
		t.Fatalf("a stream missing fetched %d bytes: no read-ahead", got)
	}
}
