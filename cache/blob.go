package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obd-project/obd/crc32c"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// Blob is one cached remote blob: an io.ReaderAt over the source's bytes that
// serves them from the local cache, plus Evict for the zfile reader's
// self-healing (zfile.Evicter). It is safe for concurrent use.
type Blob struct {
	s      *blobState
	src    Source
	closed atomic.Bool
}

// A Blob is what the image layer consumes (image.Blob), read with an intent
// (blobio.Reader) and what zfile evicts from (zfile.Evicter).
var _ interface {
	io.ReaderAt
	io.Closer
	blobio.Reader
	blobio.Evicter
} = (*Blob)(nil)

// Stats counts a blob's activity since it was opened (shared by every handle of
// the same key open in this process).
type Stats struct {
	Hits             int64 // unit pieces of reads served from the local file
	Misses           int64 // unit pieces of reads that waited for a fill
	BytesFetched     int64 // bytes read from the source
	BytesServed      int64 // bytes returned by ReadAt
	Evictions        int64 // units dropped by Evict or by capacity eviction
	Refetches        int64 // fetches of units dropped by Evict
	ChecksumFailures int64 // local pages that failed their CRC (then refetched)
	// StaleEvicts counts Evict calls that dropped nothing: the caller had read a
	// copy of the unit that was already dropped (and maybe refetched).
	StaleEvicts int64
	// OversizeRefused counts blobs Open refused for their size (Cache.Stats only).
	OversizeRefused int64
}

// blobState is what all open handles of one key share.
type blobState struct {
	c          *Cache
	log        *zap.Logger
	key, base  string
	size       int64
	us         int // unit size
	hdr        metaHeader
	meta, data *os.File
	refs       int // guarded by c.mu

	units *unitTable

	mu       sync.Mutex
	inflight map[int]*flight
	dropped  map[int]*refetchState
	streams  [maxStreams]stream
	clock    uint64
	wg       sync.WaitGroup // running fills

	hits, misses, fetched, served, evictions, refetches, corrupt, stale atomic.Int64
	lastEvictLog                                                        atomic.Int64 // unix ns
}

// unitMeta is a cached unit's page checksums and last access (unix ns).
type unitMeta struct {
	crcs    []uint32
	atime   atomic.Int64
	stamped atomic.Int64 // access time last written to the record
	// ahead: brought by read-ahead and not read since. A stream reading such a
	// unit (or missing) keeps its read-ahead going; a stream over units cached
	// otherwise (earlier runs, trace replay, demand reads) fetches nothing more,
	// as the kernel's read-ahead only moves on when it hits its own marker page.
	ahead atomic.Bool
	// reads counts, per page, the reads that began on this copy (joined its fill
	// or read it locally): when the copy is dropped as bad, that many Evicts of
	// its pages may follow from readers that saw it, and must not drop the next.
	reads []atomic.Int32
}

func newUnitMeta(crcs []uint32, reads []atomic.Int32) *unitMeta {
	if reads == nil {
		reads = make([]atomic.Int32, len(crcs))
	}
	return &unitMeta{crcs: crcs, reads: reads}
}

// countReads records a read of pages [p0, p1] of the copy.
func countReads(reads []atomic.Int32, p0, p1 int) {
	for p := max(p0, 0); p <= p1 && p < len(reads); p++ {
		reads[p].Add(1)
	}
}

// stampInterval is how stale a unit's access time on disk may get while it is
// being read: eviction scans in other processes (or after a restart) order units
// by it. A variable for tests.
var stampInterval = 30 * time.Second

// flight is one fill of units [first, first+n): single-flight for each unit.
type flight struct {
	first, n int
	ahead    bool          // read-ahead: a reader failing on it retries with its own fill
	dropping bool          // not a fill: Evict dropping the unit; readers retry after it
	intent   blobio.Intent // of the read that started the fill, passed to the Source
	done     chan struct{}
	start    int64  // blob offset of buf
	buf      []byte // the units' bytes, once done without err
	err      error
	metas    []*unitMeta    // set when persisted (or adopted from disk)
	reads    []atomic.Int32 // per page of the fill: reads that joined it (the metas' reads)
}

type refetchState struct {
	pending bool // dropped by Evict and not fetched since
	count   int  // refetches since `since`
	since   time.Time
	// bad is the page checksums of the copy Evict dropped last (at droppedAt);
	// stale is how many more Evicts its readers may still send (they read it
	// before it was dropped), expected within RefetchWindow.
	bad       []uint32
	stale     int
	droppedAt time.Time
}

// staleExpected reports whether an Evict may come from a reader of the copy
// dropped last.
func (st *refetchState) staleExpected(window time.Duration) bool {
	return st != nil && st.stale > 0 && time.Since(st.droppedAt) < window
}

// stream is a sequential reader detected by its next expected offset.
type stream struct {
	begin, next int64  // where the stream started, where its next read should start
	run         int    // consecutive sequential reads
	used        uint64 // LRU clock; 0 = free slot
}

const maxStreams = 4

// Read-ahead window growth (readAhead).
const (
	minWindow      = 1 << 20
	raWindowFactor = 1
)

// maxLocalTries bounds how often a reader goes back to the cache for one unit
// whose local copy keeps failing (e.g. evicted again between fill and read).
const maxLocalTries = 4

// fillHook, when set by tests, runs at points of a fill ("data", "record").
var fillHook func(point string)

// evictHook, when set by tests, runs in Evict between forgetting a unit and
// clearing its record.
var evictHook func()

// Open returns the cached view of the blob key (its digest) whose bytes come from
// src. Handles of the same key share the cache state; each is closed on its own.
func (c *Cache) Open(key string, src Source) (*Blob, error) {
	base, err := fileBase(key)
	if err != nil {
		return nil, err
	}
	size := src.Size()
	if size < 0 {
		return nil, fmt.Errorf("cache: blob %s: negative size %d", key, size)
	}
	if size > c.opts.MaxBlobSize {
		c.oversize.Add(1)
		c.log.Warn("cache: blob refused: size above the limit", zap.String("blob", key),
			zap.Int64("size", size), zap.Int64("limit", c.opts.MaxBlobSize))
		return nil, fmt.Errorf("cache: blob %s: claimed size %d exceeds the limit %d (cache MaxBlobSize)", key, size, c.opts.MaxBlobSize)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.blobs[base]; s != nil {
		if s.key != key || s.size != size {
			return nil, fmt.Errorf("cache: blob %s: already open as %s with size %d, now size %d", key, s.key, s.size, size)
		}
		s.refs++
		return &Blob{s: s, src: src}, nil
	}
	s, err := c.openState(key, base, size)
	if err != nil {
		return nil, err
	}
	s.refs = 1
	c.blobs[base] = s
	return &Blob{s: s, src: src}, nil
}

func (c *Cache) openState(key, base string, size int64) (*blobState, error) {
	us := c.opts.RefillSize
	nUnits := numUnits(size, us)
	s := &blobState{
		c: c, log: c.log.With(zap.String("blob", key)),
		key: key, base: base, size: size, us: us,
		hdr:      metaHeader{UnitSize: uint32(us), BlobSize: size, KeyCRC: crc32c.Checksum([]byte(key))},
		units:    newUnitTable(nUnits),
		inflight: make(map[int]*flight),
		dropped:  make(map[int]*refetchState),
	}
	var err error
	if s.meta, err = os.OpenFile(filepath.Join(c.dir, base+metaSuffix), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if s.data, err = os.OpenFile(filepath.Join(c.dir, base+dataSuffix), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		s.meta.Close()
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := s.initFiles(); err != nil {
		s.closeFiles()
		return nil, fmt.Errorf("cache: blob %s: %w", key, err)
	}
	return s, nil
}

// initFiles validates (or creates) the meta header and loads the unit records,
// holding the header's lock so that two processes do not initialise at once.
func (s *blobState) initFiles() error {
	if err := lockRange(s.meta, 0, headerSize, true); err != nil {
		return err
	}
	defer unlockRange(s.meta, 0, headerSize)
	hb := make([]byte, headerSize)
	n, _ := s.meta.ReadAt(hb, 0)
	h, err := decodeHeader(hb[:n])
	if err == nil && h != s.hdr {
		err = fmt.Errorf("header describes unit size %d, blob size %d, key CRC %#08x; want %d, %d, %#08x",
			h.UnitSize, h.BlobSize, h.KeyCRC, s.hdr.UnitSize, s.hdr.BlobSize, s.hdr.KeyCRC)
	}
	if err != nil {
		if n > 0 {
			s.log.Info("cache entry reset", zap.String("file", s.meta.Name()), zap.Error(err))
		}
		// Holes are punched rather than the files truncated to zero: ext4 flushes
		// a file truncated to zero on close (auto_da_alloc), a needless stall.
		if _, err := s.meta.WriteAt(s.hdr.encode(), 0); err != nil {
			return err
		}
		if err := s.meta.Truncate(headerSize); err != nil {
			return err
		}
		if fi, err := s.data.Stat(); err != nil {
			return err
		} else if fi.Size() > 0 {
			if err := punchHole(s.data, 0, fi.Size()); err != nil {
				return err
			}
		}
	}
	if fi, err := s.data.Stat(); err != nil {
		return err
	} else if fi.Size() != s.size {
		if err := s.data.Truncate(s.size); err != nil {
			return err
		}
	}
	forEachRecord(s.meta, s.hdr, func(unit int, crcs []uint32, atime int64) {
		m := newUnitMeta(crcs, nil)
		m.atime.Store(atime)
		m.stamped.Store(atime)
		s.units.store(unit, m)
	})
	return nil
}

func (s *blobState) closeFiles() {
	s.meta.Close()
	s.data.Close()
}

// Size is the blob's size in bytes.
func (b *Blob) Size() int64 { return b.s.size }

// Stats returns the blob's counters.
func (b *Blob) Stats() Stats { return b.s.stats() }

func (s *blobState) stats() Stats {
	return Stats{
		Hits: s.hits.Load(), Misses: s.misses.Load(),
		BytesFetched: s.fetched.Load(), BytesServed: s.served.Load(),
		Evictions: s.evictions.Load(), Refetches: s.refetches.Load(),
		ChecksumFailures: s.corrupt.Load(), StaleEvicts: s.stale.Load(),
	}
}

// Close releases the handle; the last handle of a key waits for its running
// fills and closes the files.
func (b *Blob) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	s := b.s
	c := s.c
	c.mu.Lock()
	s.refs--
	last := s.refs == 0
	if last {
		delete(c.blobs, s.base)
		c.closed.add(s.stats())
	}
	c.mu.Unlock()
	if last {
		s.wg.Wait()
		s.closeFiles()
	}
	return nil
}

// ReadAt reads len(p) bytes at off, fetching missing units from the source. A
// read reaching past Size returns the bytes up to Size and io.EOF. A failed fetch
// fails only the reads that need its units.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) { return b.readAt(blobio.Demand, p, off) }

// ReadAtIntent is ReadAt with the read's intent: the fills it starts pass it to
// the Source (e.g. a prefetch priority for trace replay and pull), and an Exact
// read starts no read-ahead (trace replay, pull and an open know what they
// want). A fill is shared by every reader of its units, so ctx's cancellation
// does not reach it: ctx only stops a read that has not begun.
func (b *Blob) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return b.readAt(in, p, off)
}

func (b *Blob) readAt(in blobio.Intent, p []byte, off int64) (int, error) {
	s := b.s
	if b.closed.Load() {
		return 0, fmt.Errorf("cache: blob %s: %w", s.key, os.ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("cache: blob %s: negative offset %d", s.key, off)
	}
	if off >= s.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := p
	if rem := s.size - off; int64(len(p)) > rem {
		want = p[:rem]
	}
	n, err := s.read(in, b.src, want, off)
	s.served.Add(int64(n))
	if err == nil && len(want) < len(p) {
		err = io.EOF
	}
	return n, err
}

func (s *blobState) read(in blobio.Intent, src Source, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	us := int64(s.us)
	end := off + int64(len(p))
	u0, u1 := int(off/us), int((end-1)/us)
	flights := s.ensure(in, src, u0, u1, false)
	if !in.Exact {
		// Read ahead of a stream only while it misses or consumes read-ahead.
		fetch := false
		for u := u0; u <= u1; u++ {
			if flights[u-u0] != nil {
				fetch = true
			} else if m := s.units.load(u); m != nil && m.ahead.Load() && m.ahead.Swap(false) {
				fetch = true
			}
		}
		s.readAhead(src, off, end, fetch)
	}
	n := 0
	for u := u0; u <= u1; u++ {
		segStart := max(off, int64(u)*us)
		segEnd := min(end, int64(u+1)*us)
		dst := p[segStart-off : segEnd-off]
		f := flights[u-u0]
		for tries := 1; ; tries++ {
			if f != nil && f.reads != nil {
				countReads(f.reads, int((segStart-f.start)/pageSize), int((segEnd-1-f.start)/pageSize))
			}
			if f == nil {
				if s.readLocal(u, dst, segStart) {
					s.hits.Add(1)
					break
				}
				if tries >= maxLocalTries {
					return n, fmt.Errorf("cache: blob %s: unit %d (bytes [%d, %d)): local copy failed its checksum %d times", s.key, u, int64(u)*us, min(int64(u+1)*us, s.size), tries)
				}
				f = s.ensure(in, src, u, u, false)[0]
				continue
			}
			<-f.done
			if f.err != nil {
				if (f.ahead || f.dropping) && tries < maxLocalTries {
					f = s.ensure(in, src, u, u, false)[0]
					continue
				}
				return n, f.err
			}
			copy(dst, f.buf[segStart-f.start:])
			s.misses.Add(1)
			break
		}
		n += len(dst)
	}
	return n, nil
}

// ensure returns, for each unit in [u0, u1], nil if it is cached, else the fill
// that brings it (joining a running one or starting new ones: adjacent missing
// units share a fill of at most MaxFetchSize).
func (s *blobState) ensure(in blobio.Intent, src Source, u0, u1 int, ahead bool) []*flight {
	o := &s.c.opts
	maxUnits := o.MaxFetchSize / s.us
	out := make([]*flight, u1-u0+1)
	var launch []*flight
	var run *flight
	now := time.Now()
	s.mu.Lock()
	for u := u0; u <= u1; u++ {
		if s.units.load(u) != nil {
			run = nil
			continue
		}
		if f := s.inflight[u]; f != nil {
			out[u-u0], run = f, nil
			continue
		}
		if st := s.dropped[u]; st != nil && st.pending {
			if ahead { // leave refetches of evicted units to demand reads
				run = nil
				continue
			}
			if now.Sub(st.since) > o.RefetchWindow {
				st.count, st.since = 0, now
			}
			if st.count >= o.MaxRefetches {
				us := int64(s.us)
				f := &flight{first: u, n: 1, done: make(chan struct{}),
					err: fmt.Errorf("cache: blob %s: unit %d (bytes [%d, %d)) refetched %d times since %s: %w",
						s.key, u, int64(u)*us, min(int64(u+1)*us, s.size), st.count, st.since.Format(time.RFC3339), ErrRefetchLimit)}
				close(f.done)
				out[u-u0], run = f, nil
				continue
			}
			st.count++
			st.pending = false
			s.refetches.Add(1)
		}
		if run == nil || run.n == maxUnits {
			run = &flight{first: u, ahead: ahead, intent: in, done: make(chan struct{}), start: int64(u) * int64(s.us)}
			launch = append(launch, run)
		}
		run.n++
		s.inflight[u] = run
		out[u-u0] = run
	}
	for _, f := range launch {
		// Counted before anyone can join (under s.mu): readers count themselves in.
		f.reads = make([]atomic.Int32, (int64(f.n)*int64(s.us)+pageSize-1)/pageSize)
	}
	s.wg.Add(len(launch))
	s.mu.Unlock()
	for _, f := range launch {
		go s.run(src, f)
	}
	return out
}

// readAhead tracks sequential streams and, once a stream has read three times in
// a row, keeps a window ahead of it fetched or in flight. It fills the window
// when half of it is missing, so the window is fetched in large coalesced reads
// rather than one unit per round trip. The window grows with the stream, as the
// kernel's read-ahead does: raWindowFactor times what the stream has read, at
// least minWindow, at most ReadAhead. A short stream (a file of a few MiB read
// through a file system) so fetches little beyond it, and a long one soon keeps
// a whole bandwidth-delay product in flight.
func (s *blobState) readAhead(src Source, off, end int64, fetch bool) {
	maxRA := s.c.opts.ReadAhead
	if maxRA < 0 || end >= s.size {
		return
	}
	s.mu.Lock()
	s.clock++
	var st *stream
	us := int64(s.us)
	for i := range s.streams {
		// Within a unit of the stream's end: queued block-device requests of one
		// stream arrive slightly out of order, and layers above may skip a little.
		if next := s.streams[i].next; s.streams[i].used != 0 && off >= next-us && off <= next+us {
			st = &s.streams[i]
			break
		}
	}
	if st == nil {
		lru := &s.streams[0]
		for i := range s.streams {
			if s.streams[i].used < lru.used {
				lru = &s.streams[i]
			}
		}
		*lru = stream{begin: off, next: end, used: s.clock}
		s.mu.Unlock()
		return
	}
	st.next, st.used = max(st.next, end), s.clock
	st.run++
	if st.run < 2 || !fetch { // three reads in a row make a stream
		s.mu.Unlock()
		return
	}
	end = st.next
	if end >= s.size {
		s.mu.Unlock()
		return
	}
	ra := min(maxRA, max(minWindow, raWindowFactor*(st.next-st.begin)))
	ua, ub := int(end/us), int((min(end+ra, s.size)-1)/us)
	missing, firstMissing := 0, false
	for u := ua; u <= ub; u++ {
		if s.units.load(u) == nil && s.inflight[u] == nil {
			missing++
			firstMissing = firstMissing || u == ua
		}
	}
	s.mu.Unlock()
	if missing > 0 && (firstMissing || 2*missing >= ub-ua+1) {
		s.ensure(blobio.ReadAhead, src, ua, ub, true)
	}
}

// run performs a fill and publishes its result.
func (s *blobState) run(src Source, f *flight) {
	defer s.wg.Done()
	s.fill(src, f)
	s.mu.Lock()
	for i := 0; i < f.n; i++ {
		u := f.first + i
		if f.metas != nil {
			if f.ahead {
				f.metas[i].ahead.Store(true)
			}
			s.units.store(u, f.metas[i])
		}
		if s.inflight[u] == f {
			delete(s.inflight, u)
		}
	}
	s.mu.Unlock()
	if f.err != nil && f.ahead {
		s.log.Debug("cache read-ahead failed", zap.Error(f.err))
	}
	close(f.done)
}

// fill brings f's units: under their record locks it adopts them if another
// process cached them meanwhile (verified), else fetches them from src, writes the
// data and then the records. A fetched fill that cannot be written is still
// served from memory.
func (s *blobState) fill(src Source, f *flight) {
	us := s.us
	end := min(f.start+int64(f.n*us), s.size)
	length := int(end - f.start)
	rs := recordSize(us)
	roff, rlen := recordOffset(f.first, us), int64(f.n*rs)
	if err := lockRange(s.meta, roff, rlen, true); err != nil {
		s.log.Warn("cache: lock unit records (filling without)", zap.Error(err))
	} else {
		defer unlockRange(s.meta, roff, rlen)
	}
	recs := make([]byte, rlen)
	if n, _ := s.meta.ReadAt(recs, roff); n == len(recs) {
		if s.adopt(f, recs, length) {
			return
		}
	}

	group := s.key
	if g, ok := src.(FetchGrouper); ok {
		group = g.FetchGroup()
	}
	s.c.fetches.acquire(group)
	buf := make([]byte, length)
	n, err := src.ReadAtIntent(context.Background(), f.intent, buf, f.start)
	s.c.fetches.release(group)
	if n < length {
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("short read: %d of %d bytes", n, length)
		}
		f.err = fmt.Errorf("cache: blob %s: fetch bytes [%d, %d): %w", s.key, f.start, end, err)
		return
	}
	s.fetched.Add(int64(length))
	f.buf = buf

	now := time.Now().UnixNano()
	metas := make([]*unitMeta, f.n)
	for i := range metas {
		ub := buf[i*us : min((i+1)*us, length)]
		m := newUnitMeta(pageCRCs(ub), f.unitReads(i, us))
		m.atime.Store(now)
		m.stamped.Store(now)
		encodeRecord(recs[i*rs:(i+1)*rs], f.first+i, len(ub), now, m.crcs)
		metas[i] = m
	}
	s.c.reserve(int64(length+pageSize-1)/pageSize*pageSize + rlen)
	if _, err := s.data.WriteAt(buf, f.start); err != nil {
		s.log.Warn("cache: write data (serving from memory)", zap.Error(err))
		return
	}
	if fillHook != nil {
		fillHook("data")
	}
	if _, err := s.meta.WriteAt(recs, roff); err != nil {
		s.log.Warn("cache: write unit records (serving from memory)", zap.Error(err))
		return
	}
	if fillHook != nil {
		fillHook("record")
	}
	f.metas = metas
}

// adopt takes f's units from disk when all their records are valid and the data
// matches them.
func (s *blobState) adopt(f *flight, recs []byte, length int) bool {
	us, rs := s.us, recordSize(s.us)
	metas := make([]*unitMeta, f.n)
	for i := range metas {
		u := f.first + i
		crcs, _, err := decodeRecord(recs[i*rs:(i+1)*rs], u, unitLen(s.size, us, u))
		if err != nil {
			return false
		}
		metas[i] = newUnitMeta(crcs, f.unitReads(i, us))
	}
	buf := make([]byte, length)
	if n, _ := s.data.ReadAt(buf, f.start); n < length {
		return false
	}
	now := time.Now().UnixNano()
	for i, m := range metas {
		if !slicesEqual(pageCRCs(buf[i*us:min((i+1)*us, length)]), m.crcs) {
			return false
		}
		m.atime.Store(now) // stamped stays 0: the next hit records the access
	}
	f.buf, f.metas = buf, metas
	return true
}

// unitReads is the part of f's read counters that belongs to its i-th unit.
func (f *flight) unitReads(i, us int) []atomic.Int32 {
	per := us / pageSize
	if f.reads == nil || (i+1)*per > len(f.reads) {
		return nil
	}
	return f.reads[i*per : (i+1)*per : (i+1)*per]
}

func slicesEqual(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

var scratch = sync.Pool{New: func() any { return new([]byte) }}

// readLocal reads dst (blob bytes at off, inside unit u) from the data file,
// verifying every page it touches. On a mismatch it forgets the unit and returns false.
func (s *blobState) readLocal(u int, dst []byte, off int64) bool {
	m := s.units.load(u)
	if m == nil {
		return false
	}
	ustart := int64(u) * int64(s.us)
	p0 := int((off - ustart) / pageSize)
	// Counted before the bytes are read: an Evict racing with this read must
	// know it may come (see Evict).
	countReads(m.reads, p0, int((off+int64(len(dst))-1-ustart)/pageSize))
	aStart := ustart + int64(p0)*pageSize
	end := off + int64(len(dst))
	aEnd := min((end+pageSize-1)/pageSize*pageSize, s.size)
	buf := dst
	var sp *[]byte
	if aStart != off || aEnd != end {
		sp = scratch.Get().(*[]byte)
		defer scratch.Put(sp)
		if cap(*sp) < int(aEnd-aStart) {
			*sp = make([]byte, s.us)
		}
		buf = (*sp)[:aEnd-aStart]
	}
	ok := true
	if n, err := s.data.ReadAt(buf, aStart); n < len(buf) {
		s.log.Debug("cache: read local unit", zap.Int("unit", u), zap.Error(err))
		ok = false
	}
	for i, p := 0, buf; ok && len(p) > 0; i++ {
		k := min(len(p), pageSize)
		ok = p0+i < len(m.crcs) && crc32c.Salted(p[:k]) == m.crcs[p0+i]
		p = p[k:]
	}
	if !ok {
		// Counted in Stats (obd_cache_crc_failures_total); the unit is fetched again.
		s.log.Warn("cache: cached data short or failing its page CRC, refetching the unit", zap.String("blob", s.key),
			zap.Int("unit", u), zap.Int64("offset", aStart), zap.Int("length", len(buf)))
		s.units.compareAndSwap(u, m, nil)
		s.corrupt.Add(1)
		return false
	}
	if sp != nil {
		copy(dst, buf[off-aStart:])
	}
	now := time.Now().UnixNano()
	m.atime.Store(now)
	if st := m.stamped.Load(); now-st > int64(stampInterval) && m.stamped.CompareAndSwap(st, now) {
		s.stamp(u, now)
	}
	return true
}

// stamp writes a unit's access time into its record. The field is outside the
// record's CRC, so this needs no lock: written into a record being cleared, it
// leaves a record that still reads as not cached.
func (s *blobState) stamp(u int, at int64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(at))
	if _, err := s.meta.WriteAt(b[:], recordOffset(u, s.us)+8); err != nil {
		s.log.Debug("cache: stamp access time", zap.Error(err))
	}
}

// Evict drops the units covering [off, off+n) (zfile calls it when a block fails
// its CRC), so that the next read fetches them again. Each unit is refetched at
// most Options.MaxRefetches times within Options.RefetchWindow; further reads of
// it fail with ErrRefetchLimit. An Evict from a reader of a copy that is already
// gone drops nothing and returns nil: the caller just reads again.
func (b *Blob) Evict(off, n int64) error {
	_, err := b.Invalidate(off, n)
	return err
}

// Invalidate is Evict reporting whether it dropped anything: false when every
// unit of the range was absent or holds a copy newer than the one the caller
// read (another reader of the same bad copy evicted it first).
func (b *Blob) Invalidate(off, n int64) (bool, error) {
	s := b.s
	if off < 0 || n < 0 {
		return false, fmt.Errorf("cache: blob %s: evict [%d, +%d): negative range", s.key, off, n)
	}
	if n == 0 || off >= s.size {
		return false, nil
	}
	end := min(off+n, s.size)
	us := int64(s.us)
	u0, u1 := int(off/us), int((end-1)/us)
	// A fill running now may carry the bad bytes: let it land, then drop it.
	for u := u0; u <= u1; u++ {
		s.mu.Lock()
		f := s.inflight[u]
		s.mu.Unlock()
		if f != nil {
			<-f.done
		}
	}
	var errs []error
	dropped := false
	for u := u0; u <= u1; u++ {
		ustart := int64(u) * us
		p0 := int((max(off, ustart) - ustart) / pageSize)
		p1 := int((min(end, ustart+us) - 1 - ustart) / pageSize)
		df := s.startDrop(u, p0, p1)
		if df == nil {
			continue
		}
		if evictHook != nil {
			evictHook()
		}
		freed, err := dropUnit(s.meta, s.data, s.hdr, u, true)
		s.mu.Lock()
		if s.inflight[u] == df {
			delete(s.inflight, u)
		}
		s.mu.Unlock()
		close(df.done)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		dropped = true
		s.evictions.Add(1)
		s.c.release(freed)
		s.logEviction(u)
	}
	if err := errors.Join(errs...); err != nil {
		return dropped, fmt.Errorf("cache: blob %s: evict [%d, %d): %w", s.key, off, end, err)
	}
	return dropped, nil
}

// errDropping fails the readers that joined an Evict's drop of a unit: they read
// again, and fetch the unit afresh.
var errDropping = errors.New("cache: unit being evicted")

// startDrop decides whether an Evict of pages [p0, p1] of unit u drops the
// cached copy. If so it forgets the copy and returns a flight that stands for
// the drop until the record is cleared: a reader (of this process, whose record
// locks do not exclude each other on the shared descriptor) must not start a
// fill that adopts the old record meanwhile. It returns nil for nothing to drop:
// the unit is absent (already dropped, refetch pending), or its copy differs
// from the copy dropped last over these pages while readers of that copy may
// still send their Evicts (the caller is one of them).
func (s *blobState) startDrop(u, p0, p1 int) *flight {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.dropped[u]
	m := s.units.load(u)
	window := s.c.opts.RefetchWindow
	if m == nil || s.inflight[u] != nil {
		if st.staleExpected(window) { // a reader of the dropped copy, before the refetch
			st.stale--
			s.stale.Add(1)
		}
		return nil
	}
	if st.staleExpected(window) && !samePages(st.bad, m.crcs, p0, p1) {
		st.stale--
		s.stale.Add(1)
		return nil
	}
	now := time.Now()
	if st == nil {
		st = &refetchState{since: now}
		s.dropped[u] = st
	}
	if !st.staleExpected(window) {
		st.stale = 0
	}
	// Readers of this copy that read the bad pages may send an Evict each; the
	// caller is one of them, or one of the earlier copy's.
	readers := int32(0)
	for p := p0; p <= p1 && p < len(m.reads); p++ {
		if r := m.reads[p].Load(); p == p0 || r < readers {
			readers = r
		}
	}
	st.stale = max(st.stale+int(readers)-1, 0)
	st.bad, st.droppedAt = m.crcs, now
	st.pending = true
	s.units.store(u, nil)
	df := &flight{first: u, n: 1, dropping: true, done: make(chan struct{}), err: errDropping}
	s.inflight[u] = df
	return df
}

// samePages reports whether two copies' page checksums agree over pages [p0, p1].
func samePages(a, b []uint32, p0, p1 int) bool {
	for p := p0; p <= p1; p++ {
		if p >= len(a) || p >= len(b) || a[p] != b[p] {
			return false
		}
	}
	return true
}

// evictLogInterval rate-limits the warning logged for self-healing evictions.
const evictLogInterval = 10 * time.Second

func (s *blobState) logEviction(u int) {
	now := time.Now().UnixNano()
	last := s.lastEvictLog.Load()
	if now-last < int64(evictLogInterval) || !s.lastEvictLog.CompareAndSwap(last, now) {
		return
	}
	us := int64(s.us)
	s.log.Warn("cache: unit evicted for a re-fetch (bad bytes read from it)", zap.String("blob", s.key), zap.Int("unit", u),
		zap.Int64("off", int64(u)*us), zap.Int64("evictions", s.evictions.Load()), zap.Int64("staleEvicts", s.stale.Load()))
}

// forget drops a unit from memory after capacity eviction removed it.
func (s *blobState) forget(u int) {
	if u < s.units.len() {
		s.units.store(u, nil)
		s.evictions.Add(1)
	}
}

// atime is the last access of a cached unit known to this process.
func (s *blobState) atime(u int) int64 {
	if m := s.units.load(u); m != nil {
		return m.atime.Load()
	}
	return 0
}
