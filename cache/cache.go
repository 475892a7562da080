// Package cache is the local extent cache between remote layer blobs (a Source:
// ranged reads from a registry) and the readers of those blobs (zfile, lsmt).
//
// Each blob (keyed by its digest) is cached in a sparse data file plus a meta file
// holding one record per refill unit (default 256 KiB) with the CRC32C of every
// 4 KiB page (layout in meta.go). A miss fetches whole units: concurrent readers of
// one unit wait for a single fetch, adjacent missing units are fetched with one
// source read (at most Options.MaxFetchSize), at most Options.MaxFetches source
// reads of one source (a registry host, see FetchGrouper) and
// Options.MaxTotalFetches of all run at once, free slots going to waiting
// sources in turn, and a sequential stream triggers asynchronous read-ahead.
//
// Sizes. A blob's size comes from outside (a manifest, a registry's answer, a
// peer's request), so Open refuses sizes above Options.MaxBlobSize and nothing
// is allocated in proportion to the size: the per-unit table fills as units are
// cached.
//
// Crash model. A fill writes the unit's data, then its record; nothing is fsync'd.
// Every read checks the pages it serves against the record, so whatever a crash,
// a torn write, a lost page, a concurrent eviction or an edit behind the cache's
// back leaves behind, bytes that do not match are never served: the unit is
// dropped and fetched again. A record that is itself torn fails its own CRC and
// reads as "not cached". The worst a crash costs is refetching.
//
// Sharing. Several processes may use one directory. A fill holds an OFD write lock
// on the unit records it writes (and re-reads them under the lock, so a unit
// another process just filled is verified and adopted, not fetched twice);
// capacity eviction holds an flock on <dir>/.lock and only evicts units whose
// records it can lock without waiting. The per-page checksums make a read racing
// with another process's eviction safe without any lock on the read path.
//
// Capacity. Usage is the allocated size (st_blocks) of the cache files. A counter
// in <dir>/.lock, shared by the processes using the directory, tracks it between
// scans (fills add what they write, evictions subtract what they free); it is
// measured afresh at Open and by every eviction, which runs when a fill would take
// the counter over the capacity. Eviction is LRU by unit, not by blob as in the
// reference: a blob is typically one layer of which a container touches a small,
// hot part, and dropping a whole multi-GiB layer to make room for one unit throws
// the hot part away with the cold. Units are evicted oldest access first (access
// times live in the records, refreshed by reads at most every 30 s) until usage is
// at most 90% of the capacity. Files are never unlinked, so a process holding a
// blob open never writes into a file nobody else can see.
//
// Self-healing. Blob.Evict (zfile calls it when a block fails its CRC) drops the
// covering units; each is refetched at most Options.MaxRefetches times within
// Options.RefetchWindow, then reads of it fail with ErrRefetchLimit, so a source
// that keeps sending bad bytes cannot cause endless refetching. Concurrent readers
// of one bad copy each call Evict; only the first drops it: the others read that
// copy too, and their Evicts (told apart by the page checksums and the number of
// reads of the dropped copy) leave the refetched copy alone, so that they just
// read again and the refetch limit counts real refetches.
package cache

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obd-project/obd/crc32c"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// Limits and defaults of Options.
const (
	MinRefillSize = 4 << 10
	MaxRefillSize = 16 << 20

	DefaultCapacity      = 4 << 30
	DefaultRefillSize    = 256 << 10
	DefaultMaxFetchSize  = 4 << 20
	DefaultMaxFetches    = 8
	DefaultMaxBlobSize   = 4 << 40
	DefaultReadAhead     = 4 << 20
	DefaultMaxRefetches  = 4
	DefaultRefetchWindow = time.Minute
)

// Options configure a Cache. Zero values take the defaults above.
type Options struct {
	Capacity   int64 // bytes of disk the cache may use (cacheSizeGB << 30)
	RefillSize int   // unit of fetching and caching: a power of two, multiple of 4096
	// MaxFetchSize bounds one source read of coalesced adjacent units (rounded
	// down to a whole number of units, at least one).
	MaxFetchSize int
	// MaxFetches bounds concurrent source reads of one source (the blobs of a
	// FetchGroup, else one blob); MaxTotalFetches (default 4*MaxFetches) those of
	// all sources. A source that hangs thus holds at most its own share.
	MaxFetches      int
	MaxTotalFetches int
	// MaxBlobSize bounds the size of a blob Open accepts (default 4 TiB): sizes
	// come from registries and peers.
	MaxBlobSize int64
	// ReadAhead is how far ahead of a sequential stream units are prefetched;
	// negative disables read-ahead.
	ReadAhead int64
	// MaxRefetches bounds how often a unit dropped by Blob.Evict is fetched again
	// within RefetchWindow; beyond it reads of the unit fail (ErrRefetchLimit).
	MaxRefetches  int
	RefetchWindow time.Duration
	Logger        *zap.Logger // nil: zap.L()
}

func (o Options) normalized() (Options, error) {
	if o.Capacity == 0 {
		o.Capacity = DefaultCapacity
	}
	if o.Capacity < 0 {
		return o, fmt.Errorf("cache: capacity %d is negative", o.Capacity)
	}
	if o.RefillSize == 0 {
		o.RefillSize = DefaultRefillSize
	}
	if !validUnitSize(int64(o.RefillSize)) {
		return o, fmt.Errorf("cache: refill size %d is not a power of two in [%d, %d]", o.RefillSize, MinRefillSize, MaxRefillSize)
	}
	if o.MaxFetchSize == 0 {
		o.MaxFetchSize = DefaultMaxFetchSize
	}
	o.MaxFetchSize = max(o.MaxFetchSize/o.RefillSize, 1) * o.RefillSize
	if o.MaxFetches <= 0 {
		o.MaxFetches = DefaultMaxFetches
	}
	if o.MaxTotalFetches <= 0 {
		o.MaxTotalFetches = 4 * o.MaxFetches
	}
	o.MaxTotalFetches = max(o.MaxTotalFetches, o.MaxFetches)
	if o.MaxBlobSize <= 0 {
		o.MaxBlobSize = DefaultMaxBlobSize
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = DefaultReadAhead
	}
	if o.MaxRefetches <= 0 {
		o.MaxRefetches = DefaultMaxRefetches
	}
	if o.RefetchWindow <= 0 {
		o.RefetchWindow = DefaultRefetchWindow
	}
	if o.Logger == nil {
		o.Logger = zap.L()
	}
	return o, nil
}

// Source is the remote side of a blob: ranged reads of Size() bytes. A fill
// reads it with the intent of the read that started the fill (Blob.ReadAtIntent;
// a plain ReadAt is blobio.Demand) and read-ahead with blobio.ReadAhead (in
// Dragonfly mode a prefetch priority). A fill is shared by every reader of its
// units, so its context is never a reader's: cancellation ends it only through
// the Source itself (Close).
type Source interface {
	blobio.Reader
}

// ErrRefetchLimit is returned for a unit dropped by Evict more than
// Options.MaxRefetches times within Options.RefetchWindow.
var ErrRefetchLimit = errors.New("cache: unit evicted and refetched too often")

// Cache is a directory of cached blobs. It is safe for concurrent use.
type Cache struct {
	dir     string
	opts    Options
	log     *zap.Logger
	fetches *fetchLimiter // bounds concurrent source reads
	lock    *os.File      // <dir>/.lock: flock'd by the eviction scan

	mu     sync.Mutex
	blobs  map[string]*blobState // open blobs by file base name
	closed Stats                 // counters of blobs not open (closed, or evicted from while closed), guarded by mu

	oversize atomic.Int64 // blobs refused by Open for their size

	// usageMu serialises this process's users of the usage counter; the flock on
	// lock serialises processes.
	usageMu sync.Mutex
	evictMu sync.Mutex // one eviction scan at a time in this process
}

// lockName is the directory lock file. It also holds the usage counter shared by
// the processes using the directory: a little-endian int64 at offset 0, the bytes
// the cache files occupy (an estimate that errs high: fills add what they write,
// evictions subtract what they free). It is measured afresh from st_blocks at
// Open and by every eviction scan, so a crash can only make it err high.
const lockName = ".lock"

// Open opens (creating if needed) the cache in dir and measures its usage.
func Open(dir string, opts Options) (*Cache, error) {
	o, err := opts.normalized()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c := &Cache{
		dir:     dir,
		opts:    o,
		log:     o.Logger.With(zap.String("cacheDir", dir)),
		fetches: newFetchLimiter(o.MaxFetches, o.MaxTotalFetches),
		lock:    lock,
		blobs:   make(map[string]*blobState),
	}
	if _, err := c.Usage(); err != nil {
		lock.Close()
		return nil, err
	}
	return c, nil
}

// Close releases the directory lock file. Blobs must be closed first.
func (c *Cache) Close() error { return c.lock.Close() }

// Usage measures the bytes the cache files occupy on disk (st_blocks) and resets
// the shared usage counter to it.
func (c *Cache) Usage() (int64, error) {
	var u int64
	err := c.withUsage(func(int64) (int64, error) {
		var err error
		u, err = c.scanUsage()
		return u, err
	})
	return u, err
}

// withUsage runs fn with the usage counter under the directory lock and stores
// what fn returns. An unreadable counter reads as a fresh scan.
func (c *Cache) withUsage(fn func(usage int64) (int64, error)) error {
	c.usageMu.Lock()
	defer c.usageMu.Unlock()
	if err := flockFile(c.lock, lockEx); err != nil {
		return err
	}
	defer flockFile(c.lock, lockUn)
	var b [8]byte
	var u int64
	if n, _ := c.lock.ReadAt(b[:], 0); n == len(b) {
		u = int64(binary.LittleEndian.Uint64(b[:]))
	}
	if u <= 0 {
		var err error
		if u, err = c.scanUsage(); err != nil {
			return err
		}
	}
	u, err := fn(u)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(b[:], uint64(max(u, 0)))
	if _, err := c.lock.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("cache: usage counter: %w", err)
	}
	return nil
}

// scanUsage sums st_blocks of the cache's data and meta files.
func (c *Cache) scanUsage() (int64, error) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return 0, fmt.Errorf("cache: %w", err)
	}
	var total int64
	for _, e := range ents {
		n := e.Name()
		if !strings.HasSuffix(n, dataSuffix) && !strings.HasSuffix(n, metaSuffix) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		total += allocated(fi)
	}
	return total, nil
}

const (
	dataSuffix = ".data"
	metaSuffix = ".meta"
)

// fileBase maps a key (a digest such as "sha256:<hex>") to a file name: bytes
// other than [A-Za-z0-9-] are escaped as _XX, so distinct keys never share a name;
// keys too long for a file name are hashed (the meta header's key CRC then guards
// against collisions).
func fileBase(key string) (string, error) {
	if key == "" {
		return "", errors.New("cache: empty blob key")
	}
	var sb strings.Builder
	for i := 0; i < len(key); i++ {
		ch := key[i]
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' {
			sb.WriteByte(ch)
		} else {
			sb.WriteByte('_')
			sb.WriteString(hex.EncodeToString([]byte{ch}))
		}
	}
	if sb.Len() > 200 {
		sum := crc32c.Checksum([]byte(key))
		return fmt.Sprintf("h_%s_%08x", sb.String()[:64], sum), nil
	}
	return sb.String(), nil
}

// reserve accounts n bytes about to be written, evicting first when usage would
// exceed the capacity. The eviction scan (every record of every blob) runs
// without the directory lock, which every fill of every process needs; under the
// lock only the chosen victims are checked again and dropped.
func (c *Cache) reserve(n int64) {
	over := false
	err := c.withUsage(func(u int64) (int64, error) {
		if u+n > c.opts.Capacity {
			over = true
			return u, nil
		}
		return u + n, nil
	})
	if err == nil && over {
		err = c.evictFor(n)
	}
	if err != nil {
		c.log.Warn("cache: usage accounting", zap.Error(err))
	}
}

// evictFor makes room for n bytes and accounts them: it scans for victims
// unlocked, then, under the directory lock, drops those not used since.
func (c *Cache) evictFor(n int64) error {
	c.evictMu.Lock() // one scan per process; the others find the room it made
	defer c.evictMu.Unlock()
	var files []scanFile
	var cands []candidate
	defer func() { closeScan(files) }()
	for scanned := false; ; scanned = true {
		done := false
		err := c.withUsage(func(u int64) (int64, error) {
			if u+n <= c.opts.Capacity {
				done = true
				return u + n, nil
			}
			if !scanned {
				return u, nil // scan first, outside the lock
			}
			done = true
			return c.evictLocked(n, files, cands) + n, nil
		})
		if err != nil || done {
			return err
		}
		if scanHook != nil {
			scanHook()
		}
		files, cands = c.scanCandidates()
		sortCandidates(cands)
	}
}

// scanHook, when set by tests, runs before an eviction scan (outside the lock).
var scanHook func()

// release accounts n bytes freed.
func (c *Cache) release(n int64) {
	if n <= 0 {
		return
	}
	err := c.withUsage(func(u int64) (int64, error) { return u - n, nil })
	if err != nil {
		c.log.Warn("cache: usage accounting", zap.Error(err))
	}
}

// lowWater is the usage eviction brings the cache down to.
func (c *Cache) lowWater() int64 { return c.opts.Capacity - c.opts.Capacity/10 }

// candidate is a cached unit that eviction may drop.
type candidate struct {
	file     int // index into the scan's files
	unit     int
	atime    int64 // last access known to the scan
	recAtime int64 // the access time in its record at the scan
}

type scanFile struct {
	base       string
	meta, data *os.File
	hdr        metaHeader
}

// evictLocked (called under the directory lock) rescans usage and, if usage plus
// need exceeds the capacity, drops the least recently used of cands (from a scan
// made without the lock, sorted) until it is at most lowWater. A candidate used
// or refilled since the scan is skipped. It returns the usage after eviction.
func (c *Cache) evictLocked(need int64, files []scanFile, cands []candidate) int64 {
	usage, err := c.scanUsage()
	if err != nil {
		c.log.Warn("cache eviction: scan", zap.Error(err))
		return usage
	}
	if usage+need <= c.opts.Capacity {
		return usage
	}
	target := c.lowWater()
	evicted := 0
	for _, cd := range cands {
		if usage+need <= target {
			break
		}
		f := files[cd.file]
		c.mu.Lock()
		bs := c.blobs[f.base]
		c.mu.Unlock()
		if bs != nil && bs.atime(cd.unit) > cd.atime {
			continue // read since the scan
		}
		freed, err := dropUnitIf(f.meta, f.data, f.hdr, cd.unit, cd.recAtime)
		if err != nil {
			continue // busy (being filled or evicted by someone else), or used since the scan
		}
		usage -= freed
		evicted++
		if bs == nil {
			c.mu.Lock()
			c.closed.Evictions++ // a blob not open here: no blob state counts it
			c.mu.Unlock()
		} else {
			bs.forget(cd.unit)
		}
	}
	if evicted > 0 {
		c.log.Info("cache eviction", zap.Int("units", evicted), zap.Int64("usage", usage), zap.Int64("capacity", c.opts.Capacity))
	}
	return usage
}

func sortCandidates(cands []candidate) {
	slices.SortFunc(cands, func(a, b candidate) int {
		switch {
		case a.atime < b.atime:
			return -1
		case a.atime > b.atime:
			return 1
		}
		return 0
	})
}

func closeScan(files []scanFile) {
	for _, f := range files {
		f.meta.Close()
		f.data.Close()
	}
}

// scanCandidates opens every blob in the directory with its own descriptors (so
// that its locks conflict with fills of this process too) and lists its cached units.
func (c *Cache) scanCandidates() ([]scanFile, []candidate) {
	ents, _ := os.ReadDir(c.dir)
	var files []scanFile
	var cands []candidate
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), metaSuffix)
		if !ok {
			continue
		}
		meta, err := os.OpenFile(filepath.Join(c.dir, name+metaSuffix), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		data, err := os.OpenFile(filepath.Join(c.dir, name+dataSuffix), os.O_RDWR, 0)
		if err != nil {
			meta.Close()
			continue
		}
		hb := make([]byte, headerSize)
		hdr, err := metaHeader{}, io.ErrUnexpectedEOF
		if _, rerr := meta.ReadAt(hb, 0); rerr == nil {
			hdr, err = decodeHeader(hb)
		}
		if err != nil { // being created, or garbage the next open resets
			meta.Close()
			data.Close()
			continue
		}
		idx := len(files)
		files = append(files, scanFile{base: name, meta: meta, data: data, hdr: hdr})
		c.mu.Lock()
		bs := c.blobs[name]
		c.mu.Unlock()
		forEachRecord(meta, hdr, func(unit int, _ []uint32, rec int64) {
			atime := rec
			if bs != nil {
				atime = max(atime, bs.atime(unit))
			}
			cands = append(cands, candidate{file: idx, unit: unit, atime: atime, recAtime: rec})
		})
	}
	return files, cands
}

// forEachRecord calls fn for every valid unit record of a meta file, reading it in
// bounded chunks.
func forEachRecord(meta *os.File, hdr metaHeader, fn func(unit int, crcs []uint32, atime int64)) {
	us := int(hdr.UnitSize)
	rs := recordSize(us)
	units := numUnits(hdr.BlobSize, us)
	per := max(1, min((1<<20)/rs, units))
	buf := make([]byte, per*rs)
	for first := 0; first < units; first += per {
		n := min(per, units-first)
		b := buf[:n*rs]
		got, _ := meta.ReadAt(b, recordOffset(first, us))
		for i := 0; i < got/rs; i++ {
			u := first + i
			if crcs, at, err := decodeRecord(b[i*rs:(i+1)*rs], u, unitLen(hdr.BlobSize, us, u)); err == nil {
				fn(u, crcs, at)
			}
		}
		if got < len(b) {
			return
		}
	}
}

// errUsedSince refuses to evict a unit whose record changed since the scan.
var errUsedSince = errors.New("unit used or refilled since the eviction scan")

// dropUnitIf is dropUnit for capacity eviction: without waiting for the record's
// lock, and only if the record still holds the access time the scan saw (a
// unit refilled or read since is not the victim it was).
func dropUnitIf(meta, data *os.File, hdr metaHeader, unit int, atime int64) (int64, error) {
	us := int(hdr.UnitSize)
	rs := recordSize(us)
	roff := recordOffset(unit, us)
	if err := lockRange(meta, roff, int64(rs), false); err != nil {
		return 0, err
	}
	defer unlockRange(meta, roff, int64(rs))
	rec := make([]byte, rs)
	if _, err := meta.ReadAt(rec, roff); err != nil {
		return 0, err
	}
	if _, at, err := decodeRecord(rec, unit, unitLen(hdr.BlobSize, us, unit)); err != nil || at != atime {
		return 0, errUsedSince
	}
	return dropLocked(meta, data, hdr, unit)
}

// dropUnit clears a unit's record and punches its data out, under the record's
// lock (waiting for it, or failing with errBusy when wait is false). It returns
// the bytes freed.
func dropUnit(meta, data *os.File, hdr metaHeader, unit int, wait bool) (int64, error) {
	us := int(hdr.UnitSize)
	rs := int64(recordSize(us))
	roff := recordOffset(unit, us)
	if err := lockRange(meta, roff, rs, wait); err != nil {
		return 0, err
	}
	defer unlockRange(meta, roff, rs)
	return dropLocked(meta, data, hdr, unit)
}

// dropLocked is dropUnit under the record's lock.
func dropLocked(meta, data *os.File, hdr metaHeader, unit int) (int64, error) {
	us := int(hdr.UnitSize)
	rs := int64(recordSize(us))
	roff := recordOffset(unit, us)
	before, _ := data.Stat()
	if _, err := meta.WriteAt(make([]byte, rs), roff); err != nil {
		return 0, err
	}
	// The record is gone, so the unit reads as missing whatever happens here; a
	// failed punch only leaves space that the next eviction scan finds in use.
	if err := punchHole(data, int64(unit)*int64(us), int64(unitLen(hdr.BlobSize, us, unit))); err != nil {
		return 0, err
	}
	after, _ := data.Stat()
	if before == nil || after == nil {
		return 0, nil
	}
	return max(allocated(before)-allocated(after), 0), nil
}

func numUnits(size int64, unitSize int) int {
	return int((size + int64(unitSize) - 1) / int64(unitSize))
}

// unitLen is the number of blob bytes in unit.
func unitLen(size int64, unitSize, unit int) int {
	start := int64(unit) * int64(unitSize)
	return int(min(size-start, int64(unitSize)))
}

func (t *Stats) add(s Stats) {
	t.Hits += s.Hits
	t.Misses += s.Misses
	t.BytesFetched += s.BytesFetched
	t.BytesServed += s.BytesServed
	t.Evictions += s.Evictions
	t.Refetches += s.Refetches
	t.ChecksumFailures += s.ChecksumFailures
	t.StaleEvicts += s.StaleEvicts
	t.OversizeRefused += s.OversizeRefused
}

// Stats sums the counters of every blob this Cache has opened, for metrics.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.closed
	for _, s := range c.blobs {
		t.add(s.stats())
	}
	t.OversizeRefused = c.oversize.Load()
	return t
}

// Complete reports whether every unit of the blob key of size bytes is cached, per
// its records (the data itself is not read: reads still verify every page and
// refetch what fails). It is cheap: an open blob answers from memory, a closed one
// from its meta file. Callers use it to open a fully cached blob without asking
// the source anything.
func (c *Cache) Complete(key string, size int64) bool {
	have, total := c.CachedUnits(key, size)
	return total > 0 && have == total
}

// CachedUnits reports how many of the blob's units are cached, per its records,
// and how many it has; (0, 0) when the cache has no entry for key at that size.
func (c *Cache) CachedUnits(key string, size int64) (have, total int) {
	base, err := fileBase(key)
	if err != nil || size < 0 || size > c.opts.MaxBlobSize {
		return 0, 0
	}
	c.mu.Lock()
	s := c.blobs[base]
	c.mu.Unlock()
	if s != nil {
		if s.key != key || s.size != size {
			return 0, 0
		}
		return s.units.count(), s.units.len()
	}
	meta, err := os.Open(filepath.Join(c.dir, base+metaSuffix))
	if err != nil {
		return 0, 0
	}
	defer meta.Close()
	want := metaHeader{UnitSize: uint32(c.opts.RefillSize), BlobSize: size, KeyCRC: crc32c.Checksum([]byte(key))}
	hb := make([]byte, headerSize)
	if _, err := meta.ReadAt(hb, 0); err != nil {
		return 0, 0
	}
	if h, err := decodeHeader(hb); err != nil || h != want {
		return 0, 0
	}
	forEachRecord(meta, want, func(int, []uint32, int64) { have++ })
	return have, numUnits(size, int(want.UnitSize))
}

// MaxBlobSize is the largest blob size Open accepts (Options.MaxBlobSize).
func (c *Cache) MaxBlobSize() int64 { return c.opts.MaxBlobSize }
