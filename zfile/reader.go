package zfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/crc32c"
	"github.com/obd-project/obd/internal/blobio"
)

// Evicter is an optional capability of the io.ReaderAt given to Open: a caching
// layer drops [off, off+n) so that the next read fetches those bytes again. When a
// block fails its CRC or does not decompress, the Reader evicts the block's
// compressed range and re-reads it (at most maxTries reads in all) before giving up.
// Local files do not implement it, and wrappers over them return
// blobio.ErrNotEvictable: re-reading them cannot help.
type Evicter = blobio.Evicter

// maxTries is the number of reads of a bad block: 1 + 4 retries (the reference
// makes 1 + 2), one per refetch the extent cache allows a unit in its window
// (cache.DefaultMaxRefetches), so that a source which damages a few percent of
// its answers (FlipBit at 5% in remote's damage test) still heals a block whose
// refetches were hit again.
const maxTries = 5

// maxBatch bounds one pread of consecutive compressed blocks: a 1 MiB read (the
// largest a ublk device passes by default) of compressible data takes one pread.
const maxBatch = 1 << 20

// ErrChecksum is wrapped by a BlockError whose block failed its CRC.
var ErrChecksum = errors.New("zfile: block checksum mismatch")

// BlockError reports a block that could not be read, verified or decompressed.
// Off and Len give the block's compressed byte range in the file (including its
// CRC), so a caching layer can evict exactly that range.
type BlockError struct {
	Name  string // file name given with WithName, may be empty
	Block int64  // block index
	Off   int64  // file offset of the compressed block
	Len   int64  // compressed length including the CRC
	Tries int    // reads attempted
	Err   error  // cause: wraps ErrChecksum, a decompression error or an I/O error
}

func (e *BlockError) Error() string {
	name := e.Name
	if name == "" {
		name = "file"
	}
	return fmt.Sprintf("zfile %s: block %d (compressed bytes [%d, %d)), %d read(s): %v",
		name, e.Block, e.Off, e.Off+e.Len, e.Tries, e.Err)
}

func (e *BlockError) Unwrap() error { return e.Err }

// OpenOption configures Open.
type OpenOption func(*openConfig)

type openConfig struct {
	name        string
	cacheBlocks int
}

// WithName sets the file name used in error messages.
func WithName(name string) OpenOption { return func(c *openConfig) { c.name = name } }

// WithBlockCache keeps the n most recently decompressed blocks that were read only
// in part (n <= 0 disables it). Small sequential reads then decompress each block
// once instead of once per read (BenchmarkSequentialRead512: about 6x faster).
func WithBlockCache(n int) OpenOption {
	return func(c *openConfig) { c.cacheBlocks = max(n, 0) }
}

// DefaultCacheBytes sizes the block cache unless WithBlockCache says otherwise:
// 64 blocks of 4 KiB, 4 blocks of 64 KiB.
const DefaultCacheBytes = 256 << 10

// Info describes an open ZFile, for inspection tools.
type Info struct {
	Header Record // the record at offset 0
	// Trailer is the record at the end. When the header carries the index
	// (FlagHeaderOverwrite) the trailer is not needed: it is then shown if present
	// but not validated, and nil if absent.
	Trailer       *Record
	Algorithm     Algorithm
	BlockSize     int
	Blocks        int64
	Verify        bool  // per-block CRCs present and checked
	OriginalSize  int64 // uncompressed size
	FileSize      int64
	IndexOffset   int64
	DigestChecked bool // the header digest and index CRC were present and verified
	// Legacy is true for files written before digests existed (flag bit 4 clear);
	// such files often carry garbage in flag bits >= 5 and in the digest/reserved fields.
	Legacy bool
}

// Reader is random read access to the uncompressed content of a ZFile. It is safe
// for concurrent use.
type Reader struct {
	r     io.ReaderAt
	name  string
	info  Info
	bs    int64
	size  int64
	lens  []uint32 // jump table: on-disk length of each block (with CRC)
	bases []int64  // file offset of block 16*k
	cache *blockCache
	bufs  sync.Pool // *[]byte scratch for compressed batches

	serial bool // decode large reads on one goroutine (benchmark baseline)
}

const groupShift = 4

// tableChunk is how many bytes of the jump table Open reads at a time.
const tableChunk = 1 << 20

// Open reads the header, trailer and jump table of the ZFile in r (size bytes) and
// validates them (docs/overlaybd-format.md §4.4). Every allocation is bounded by
// size, never by a header field alone.
func Open(r io.ReaderAt, size int64, opts ...OpenOption) (*Reader, error) {
	cfg := openConfig{cacheBlocks: -1}
	for _, o := range opts {
		o(&cfg)
	}
	zr := &Reader{r: r, name: cfg.name}
	if zr.name == "" {
		zr.name = "file"
	}
	if err := zr.load(size); err != nil {
		return nil, err
	}
	if cfg.cacheBlocks < 0 {
		cfg.cacheBlocks = DefaultCacheBytes / zr.info.BlockSize
	}
	if cfg.cacheBlocks > 0 {
		zr.cache = newBlockCache(cfg.cacheBlocks)
	}
	return zr, nil
}

func (z *Reader) formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrFormat, z.name, fmt.Sprintf(format, args...))
}

func (z *Reader) load(size int64) error {
	if size < 2*HeaderSize {
		return z.formatErr("file size %d is smaller than header + trailer (%d)", size, 2*HeaderSize)
	}
	buf := make([]byte, HeaderSize)
	if err := readFull(z.r, buf, 0); err != nil {
		return fmt.Errorf("zfile %s: read header: %w", z.name, err)
	}
	hdr, ok := decodeRecord(buf)
	if !ok {
		return z.formatErr("header at offset 0: bad magic %q", buf[:24])
	}
	if !hdr.Has(FlagHeader) {
		return z.formatErr("header at offset 0: flags %#x lack the header bit", hdr.Flags)
	}
	if hdr.Has(FlagDigest) {
		if want, got, ok := digestOK(buf); !ok {
			return z.formatErr("header at offset 0: digest mismatch: stored %#08x, computed %#08x", want, got)
		}
	}
	info := Info{Header: hdr, FileSize: size, Legacy: !hdr.Has(FlagDigest)}
	rec := hdr
	limit := uint64(size) // the jump table must end before this offset
	if !hdr.Has(FlagHeaderOverwrite) {
		if !hdr.Has(FlagDataFile) {
			return z.formatErr("header at offset 0: flags %#x: not a data file", hdr.Flags)
		}
		toff := size - HeaderSize
		if err := readFull(z.r, buf, toff); err != nil {
			return fmt.Errorf("zfile %s: read trailer at %d: %w", z.name, toff, err)
		}
		tr, ok := decodeRecord(buf)
		if !ok {
			return z.formatErr("trailer at offset %d: bad magic %q", toff, buf[:24])
		}
		if tr.Flags&(FlagHeader|FlagDataFile|FlagSealed) != FlagDataFile|FlagSealed {
			return z.formatErr("trailer at offset %d: flags %#x, want trailer+data+sealed (bits 1,2 set, bit 0 clear)", toff, tr.Flags)
		}
		if tr.Has(FlagDigest) {
			if want, got, ok := digestOK(buf); !ok {
				return z.formatErr("trailer at offset %d: digest mismatch: stored %#08x, computed %#08x", toff, want, got)
			}
		}
		info.Trailer = &tr
		rec = tr
		limit = uint64(toff)
	}
	where := "trailer"
	if info.Trailer == nil {
		where = "header"
		// Not needed to read the file, but inspection tools show it: best effort.
		if readFull(z.r, buf, size-HeaderSize) == nil {
			if tr, ok := decodeRecord(buf); ok && !tr.Has(FlagHeader) {
				info.Trailer = &tr
			}
		}
	}
	switch {
	case rec.IndexSize > MaxBlocks:
		return z.formatErr("%s: index_size %d exceeds the limit %d", where, rec.IndexSize, MaxBlocks)
	case !isPow2(rec.BlockSize) || rec.BlockSize < minReadBlockSize || rec.BlockSize > MaxBlockSize:
		return z.formatErr("%s: block_size %d, want a power of two in [%d, %d]", where, rec.BlockSize, minReadBlockSize, MaxBlockSize)
	case rec.Algorithm != LZ4 && rec.Algorithm != Zstd:
		return z.formatErr("%s: algorithm %d (%v) unsupported, want 1 (lz4) or 2 (zstd)", where, rec.Algorithm, rec.Algorithm)
	case rec.UseDict != 0 || rec.DictSize != 0:
		return z.formatErr("%s: dictionary (use_dict %d, dict_size %d) unsupported", where, rec.UseDict, rec.DictSize)
	case rec.IndexOffset < HeaderSize || rec.IndexOffset > limit || rec.IndexSize*4 > limit-rec.IndexOffset:
		return z.formatErr("%s: jump table [%d, +%d*4) does not fit in [%d, %d)", where, rec.IndexOffset, rec.IndexSize, HeaderSize, limit)
	}
	bs := uint64(rec.BlockSize)
	if want := (rec.OriginalSize + bs - 1) / bs; rec.IndexSize != want || rec.OriginalSize > MaxBlocks*bs {
		return z.formatErr("%s: index_size %d, want %d blocks for original size %d and block size %d", where, rec.IndexSize, want, rec.OriginalSize, bs)
	}
	n := int64(rec.IndexSize)
	minLen, maxLen := uint32(1), uint32(bs)+512
	if rec.Verify {
		minLen, maxLen = crcSize+1, maxLen+crcSize
	}
	// The table is read in chunks and the slices grow with what was read, so a
	// blob whose size and index_size are claims (a hostile registry's) costs
	// memory only for bytes really delivered.
	z.lens = make([]uint32, 0, min(n, tableChunk/4))
	z.bases = make([]int64, 0, min((n>>groupShift)+1, tableChunk/4))
	chunk := make([]byte, min(4*n, tableChunk))
	crc := uint32(0)
	off := int64(HeaderSize)
	for done := int64(0); done < n; {
		k := min(n-done, tableChunk/4)
		buf := chunk[:4*k]
		at := int64(rec.IndexOffset) + 4*done
		if err := readFull(z.r, buf, at); err != nil {
			return fmt.Errorf("zfile %s: read jump table at %d (%d of %d bytes): %w", z.name, rec.IndexOffset, 4*done, 4*n, err)
		}
		crc = crc32c.Update(crc, buf)
		for j := range k {
			i := done + j
			l := binary.LittleEndian.Uint32(buf[4*j:])
			if l < minLen || l > maxLen {
				return z.formatErr("jump table at %d: block %d length %d, want %d..%d", rec.IndexOffset, i, l, minLen, maxLen)
			}
			if i&(1<<groupShift-1) == 0 {
				z.bases = append(z.bases, off)
			}
			z.lens = append(z.lens, l)
			off += int64(l)
		}
		done += k
	}
	if rec.Has(FlagDigest) && crc != rec.IndexCRC {
		return z.formatErr("jump table at %d: index_crc mismatch: stored %#08x, computed %#08x", rec.IndexOffset, rec.IndexCRC, crc)
	}
	// Writers put the jump table right after the last block (§4.3), so the sum
	// of the lengths is exact: this catches a corrupted entry of a legacy file,
	// which has no index_crc.
	if uint64(off) != rec.IndexOffset {
		return z.formatErr("jump table at %d: blocks end at %d, want the jump table's offset", rec.IndexOffset, off)
	}
	info.Algorithm = rec.Algorithm
	info.BlockSize = int(rec.BlockSize)
	info.Blocks = n
	info.Verify = rec.Verify
	info.OriginalSize = int64(rec.OriginalSize)
	info.IndexOffset = int64(rec.IndexOffset)
	info.DigestChecked = hdr.Has(FlagDigest) && rec.Has(FlagDigest)
	z.info = info
	z.bs = int64(bs)
	z.size = int64(rec.OriginalSize)
	z.bufs.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	return nil
}

// readFull reads exactly len(p) bytes at off.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read [%d, %d): got %d bytes: %w", off, off+int64(len(p)), n, err)
}

// Size is the uncompressed size.
func (z *Reader) Size() int64 { return z.size }

// Info describes the file's header, trailer and layout.
func (z *Reader) Info() Info { return z.info }

// blockOffset is the file offset of block i.
func (z *Reader) blockOffset(i int64) int64 {
	off := z.bases[i>>groupShift]
	for j := i &^ (1<<groupShift - 1); j < i; j++ {
		off += int64(z.lens[j])
	}
	return off
}

// blockLen is the uncompressed length of block i (only the last one may be short).
func (z *Reader) blockLen(i int64) int64 {
	return min(z.bs, z.size-i*z.bs)
}

// ReadAt reads uncompressed bytes. Reads past the end return io.EOF; a block that
// fails its CRC or does not decompress yields a *BlockError, never wrong bytes.
func (z *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("zfile %s: negative offset %d", z.name, off)
	}
	if off >= z.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), z.size)
	first, last := off/z.bs, (end-1)/z.bs
	n := 0
	// Whole blocks of a batch with their raw bytes at hand are decoded together,
	// in parallel when there are enough of them (decodeBatch).
	var jobs []decodeJob
	if (last-first+1)*z.bs >= parallelMinBytes && last-first+1 >= parallelMinBlocks && runtime.GOMAXPROCS(0) > 1 && !z.serial {
		jp := jobLists.Get().(*[]decodeJob)
		jobs = (*jp)[:0]
		defer func() {
			if cap(jobs) <= 4*maxBatch/minBlockLen {
				*jp = jobs[:0]
				clear(jobs[:cap(jobs)]) // drop the references to p
				jobLists.Put(jp)
			}
		}()
	}
	flush := func() error {
		if len(jobs) == 0 {
			return nil
		}
		failed, err := z.decodeBatch(jobs)
		if err != nil {
			n = jobs[failed].at // bytes before the failed block are good
		}
		jobs = jobs[:0]
		return err
	}
	err := z.walk(first, last+1, func(i int64, raw []byte, cstart int64) error {
		bstart := i * z.bs
		blen := z.blockLen(i)
		from, to := max(off, bstart)-bstart, min(end, bstart+blen)-bstart
		if from == 0 && to == blen {
			// Whole block wanted: decode straight into the caller's buffer.
			dst := p[n : n+int(blen)]
			if jobs != nil && raw != nil {
				jobs = append(jobs, decodeJob{i: i, raw: raw, off: cstart, dst: dst, at: n})
				n += int(blen)
				return nil
			}
			if err := flush(); err != nil {
				return err
			}
			if err := z.decode(i, raw, cstart, dst); err != nil {
				return err
			}
			n += int(blen)
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		if z.cache != nil {
			if b := z.cache.get(i); b != nil {
				n += copy(p[n:], b[from:to])
				return nil
			}
		}
		blk := make([]byte, blen)
		if err := z.decode(i, raw, cstart, blk); err != nil {
			return err
		}
		if z.cache != nil {
			z.cache.put(i, blk)
		}
		n += copy(p[n:], blk[from:to])
		return nil
	}, func(i int64) bool {
		// Skip the compressed read for partial blocks the cache already holds.
		if z.cache == nil {
			return false
		}
		bstart := i * z.bs
		return (off > bstart || end < bstart+z.blockLen(i)) && z.cache.has(i)
	}, flush)
	if err != nil {
		return n, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// walk reads the compressed bytes of blocks [first, end) in batches of up to
// maxBatch bytes and calls fn for each block with its raw bytes (data + CRC) and
// file offset. Blocks for which skip reports true, and blocks of a batch whose read
// failed, get raw == nil: fn must then read them through decode. batchDone, if
// not nil, runs after the last fn of each batch, while its raw bytes are valid.
func (z *Reader) walk(first, end int64, fn func(i int64, raw []byte, off int64) error, skip func(int64) bool, batchDone func() error) error {
	bp := z.bufs.Get().(*[]byte)
	defer z.bufs.Put(bp)
	for b := first; b < end; {
		if skip != nil && skip(b) {
			if err := fn(b, nil, 0); err != nil {
				return err
			}
			b++
			continue
		}
		cstart := z.blockOffset(b)
		clen := int64(z.lens[b])
		e := b + 1
		for e < end && clen+int64(z.lens[e]) <= maxBatch && (skip == nil || !skip(e)) {
			clen += int64(z.lens[e])
			e++
		}
		if int64(cap(*bp)) < clen {
			*bp = make([]byte, clen)
		}
		buf := (*bp)[:clen]
		batchOK := readFull(z.r, buf, cstart) == nil
		pos := int64(0)
		for i := b; i < e; i++ {
			l := int64(z.lens[i])
			var raw []byte
			if batchOK {
				raw = buf[pos : pos+l]
			}
			if err := fn(i, raw, cstart+pos); err != nil {
				return err
			}
			pos += l
		}
		if batchDone != nil {
			if err := batchDone(); err != nil {
				return err
			}
		}
		b = e
	}
	return nil
}

// Parallel decoding of large reads: a 1 MiB read of 4 KiB blocks is 256
// decompressions + CRCs, which one core does several times slower than the
// storage delivers them. Waking a helper costs CPU (a futex wake, context
// switches, cache lines moving between cores; far dearer under emulation): on a
// 2-core VM, 64-256 KiB reads decoded on two goroutines took 1.3-1.6x the CPU
// of one, 1 MiB reads about 1.05x, so only batches of 512 KiB and more get one.
const (
	parallelMinBytes  = 512 << 10 // smaller batches of whole blocks are decoded in line
	parallelMinBlocks = 8         // nor are fewer blocks than this
	minBlockLen       = 4096      // smallest block size, to size the job list
	maxDecoders       = 8
	// claimBytes is how much uncompressed data a decoder takes at a time: large
	// enough that the shared counter is touched rarely, small enough that a
	// helper that starts late still takes a share and the caller never waits
	// long for one that is mid-claim.
	claimBytes = 32 << 10
)

// jobLists recycles ReadAt's decode job lists (16 KiB each).
var jobLists = sync.Pool{New: func() any { l := make([]decodeJob, 0, maxBatch/minBlockLen); return &l }}

// decodeJob is a whole block to decode into dst; at is dst's offset in the read.
type decodeJob struct {
	i, off int64
	raw    []byte
	dst    []byte
	at     int
}

// helperStarted, when not nil, runs as a decode helper goroutine starts (tests
// delay helpers with it).
var helperStarted func()

// sharedDecode is a batch decoded by the caller and helpers, each claiming
// claim jobs at a time from next. A helper that starts after the caller has
// claimed everything only touches next, so the caller waits only for helpers
// holding a claim (done counts finished jobs; the helper finishing the last one
// signals last).
type sharedDecode struct {
	z      *Reader
	jobs   []decodeJob
	claim  int64
	next   atomic.Int64
	done   atomic.Int64
	failAt atomic.Int64 // lowest failed job so far, len(jobs) if none
	last   chan struct{}
	mu     sync.Mutex
	err    error // failAt's error
}

// run decodes claims until none are left and reports whether it finished the
// batch's last job.
func (s *sharedDecode) run() bool {
	total := int64(len(s.jobs))
	for {
		k := s.next.Add(s.claim) - s.claim
		if k >= total {
			return false
		}
		e := min(k+s.claim, total)
		for j := k; j < e; j++ {
			if j > s.failAt.Load() {
				break // a block before this one failed: the rest is not needed
			}
			jb := &s.jobs[j]
			if err := s.z.decode(jb.i, jb.raw, jb.off, jb.dst); err != nil {
				s.fail(j, err)
				break
			}
		}
		if s.done.Add(e-k) == total {
			return true
		}
	}
}

func (s *sharedDecode) fail(j int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j < s.failAt.Load() {
		s.failAt.Store(j)
		s.err = err
	}
}

// decodeBatch decodes jobs (in block order), on several goroutines when there are
// enough, and returns the index of the first job that failed with its error.
func (z *Reader) decodeBatch(jobs []decodeJob) (int, error) {
	// Each decoder gets at least half of parallelMinBytes.
	workers := min(int64(runtime.GOMAXPROCS(0)), maxDecoders, int64(len(jobs))*z.bs/(parallelMinBytes/2))
	if workers <= 1 || len(jobs) < parallelMinBlocks {
		for k := range jobs {
			if err := z.decode(jobs[k].i, jobs[k].raw, jobs[k].off, jobs[k].dst); err != nil {
				return k, err
			}
		}
		return 0, nil
	}
	s := &sharedDecode{z: z, jobs: jobs, claim: max(claimBytes/z.bs, 1), last: make(chan struct{}, 1)}
	s.failAt.Store(int64(len(jobs)))
	for range workers - 1 {
		go func() {
			if helperStarted != nil {
				helperStarted()
			}
			if s.run() {
				s.last <- struct{}{}
			}
		}()
	}
	// The caller decodes too rather than wait idle, from the first claim on.
	if !s.run() {
		<-s.last
	}
	if k := s.failAt.Load(); k < int64(len(jobs)) {
		return int(k), s.err
	}
	return 0, nil
}

// decode checks and decompresses block i from raw (read at file offset off) into
// dst, which has the block's exact uncompressed length. raw == nil means the block
// still has to be read.
func (z *Reader) decode(i int64, raw []byte, off int64, dst []byte) error {
	if raw == nil {
		return z.settle(i, z.blockOffset(i), dst, 0, nil)
	}
	if err := z.decodeOnce(raw, dst); err != nil {
		return z.settle(i, off, dst, 1, err)
	}
	return nil
}

func (z *Reader) decodeOnce(raw, dst []byte) error {
	data := raw
	if z.info.Verify {
		data = raw[:len(raw)-crcSize]
		stored := binary.LittleEndian.Uint32(raw[len(data):])
		if got := crc32c.Salted(data); got != stored {
			return fmt.Errorf("%w: stored %#08x, computed %#08x", ErrChecksum, stored, got)
		}
	}
	return decompressBlock(z.info.Algorithm, data, dst)
}

// settle reads block i into dst after done failed reads (the last one failing with
// cause). Before each re-read it evicts the block's range, which only a source
// implementing Evicter can do; at most maxTries reads happen in all.
func (z *Reader) settle(i, off int64, dst []byte, done int, cause error) error {
	l := int64(z.lens[i])
	ev, canEvict := z.r.(Evicter)
	var raw []byte
	for {
		if done > 0 {
			if !canEvict || done >= maxTries {
				return &BlockError{Name: z.name, Block: i, Off: off, Len: l, Tries: done, Err: cause}
			}
			if err := ev.Evict(off, l); err != nil {
				if !errors.Is(err, blobio.ErrNotEvictable) { // not evictable: as without Evict
					cause = fmt.Errorf("%w (evicting for a re-read failed: %v)", cause, err)
				}
				return &BlockError{Name: z.name, Block: i, Off: off, Len: l, Tries: done, Err: cause}
			}
		}
		done++
		if raw == nil {
			raw = make([]byte, l)
		}
		if err := readFull(z.r, raw, off); err != nil {
			cause = err
			continue
		}
		if err := z.decodeOnce(raw, dst); err != nil {
			cause = err
			continue
		}
		return nil
	}
}

// Verify reads every block, checking its CRC (when the file has them) and that it
// decompresses to the right length. It returns the first *BlockError.
func (z *Reader) Verify() error {
	scratch := make([]byte, z.bs)
	return z.walk(0, int64(len(z.lens)), func(i int64, raw []byte, off int64) error {
		return z.decode(i, raw, off, scratch[:z.blockLen(i)])
	}, nil, nil)
}
