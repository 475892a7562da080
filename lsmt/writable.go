package lsmt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Writable is a writable LSMT layer, either append-only (a data file of appended
// writes plus an index file logging one 16-byte entry per write) or sparse (one data
// file where virtual byte X lives at file offset 4096+X, indexed by its allocated
// ranges). It is safe for concurrent use: reads share a read lock, writes are
// serialized.
type Writable struct {
	// syncMu serialises Sync, Close and CloseSeal, so the files stay open while Sync
	// fsyncs them without holding mu.
	syncMu   sync.Mutex
	mu       sync.RWMutex
	data     *os.File
	index    *os.File // nil for a sparse layer
	header   HeaderTrailer
	vsize    uint64
	vsizeOld uint64 // vsize stored in the headers
	dataEnd  int64  // append position in the data file (bytes, 512-aligned)
	indexEnd int64  // append position in the index file
	segs     segmentMap
	closed   bool
	// blockSize is a sparse data file's allocation unit (see sparse.go).
	blockSize int64
	dropped   ReplayDrops
}

// ReplayDrops describes the index records OpenWritable dropped because their data lies
// past the end of the data file: writes after the last FLUSH whose record reached the
// disk before their data did (a power loss). No FLUSH acknowledged them.
type ReplayDrops struct {
	Records int64   // how many
	FirstAt int64   // file offset of the first one in the index file
	First   Segment // the first one
}

// maxIndexRecords is the index log's limit, MaxIndexSize, lowered by tests.
var maxIndexRecords int64 = MaxIndexSize

// errIndexFull is wrapped by the error of a write or discard refused because the
// index log is full.
var errIndexFull = unix.ENOSPC

// CreateOptions describe a new writable layer.
type CreateOptions struct {
	VirtualSize uint64 // bytes; 0 = take the lower layers' size when stacked
	UUID        UUID   // null = a random uuid, as overlaybd-create does
	ParentUUID  UUID
	Sparse      bool // one sparse data file, no index file
}

var errClosed = errors.New("lsmt: writable layer is closed")

// Create initialises a new writable layer in data (and index, unless opts.Sparse; pass
// nil then). The files should be empty; they are written from offset 0.
func Create(data, index *os.File, opts CreateOptions) (*Writable, error) {
	if err := lockLayer(data, index); err != nil {
		return nil, err
	}
	if opts.VirtualSize%SectorSize != 0 {
		return nil, fmt.Errorf("lsmt: virtual size %d is not a multiple of %d", opts.VirtualSize, SectorSize)
	}
	if opts.UUID.IsNull() {
		u, err := NewRandomUUID()
		if err != nil {
			return nil, err
		}
		opts.UUID = u
	}
	h := HeaderTrailer{Flags: flagsRWData, VirtualSize: opts.VirtualSize, UUID: opts.UUID, ParentUUID: opts.ParentUUID}
	if opts.Sparse {
		h.Flags |= FlagSparse
	} else if index == nil {
		return nil, errors.New("lsmt: an append-only writable layer needs an index file")
	}
	b, _ := h.MarshalBinary()
	if _, err := data.WriteAt(b, 0); err != nil {
		return nil, fmt.Errorf("lsmt: writing data header: %w", err)
	}
	// A layer must open after a power loss even if it was never flushed.
	if err := data.Sync(); err != nil {
		return nil, fmt.Errorf("lsmt: syncing data header: %w", err)
	}
	w := &Writable{data: data, header: h, vsize: h.VirtualSize, vsizeOld: h.VirtualSize, dataEnd: HeaderSize}
	if opts.Sparse {
		if err := data.Truncate(int64(h.VirtualSize) + HeaderSize); err != nil {
			return nil, fmt.Errorf("lsmt: sizing sparse data file: %w", err)
		}
		w.blockSize = allocUnit(data)
		return w, nil
	}
	ih := h
	ih.Flags = flagsRWIndex
	ih.IndexOffset = HeaderSize
	b, _ = ih.MarshalBinary()
	if _, err := index.WriteAt(b, 0); err != nil {
		return nil, fmt.Errorf("lsmt: writing index header: %w", err)
	}
	if err := index.Sync(); err != nil {
		return nil, fmt.Errorf("lsmt: syncing index header: %w", err)
	}
	w.index = index
	w.indexEnd = HeaderSize
	return w, nil
}

// OpenWritable opens an existing writable layer. index is nil for a sparse layer.
// The index log is replayed in file order (later entries win); invalid entries are
// skipped and a torn last record (the file size not a whole number of entries) is
// ignored and overwritten by the next write. An entry whose data lies past the end of
// the data file (a power loss kept the record of an unflushed write but not its data)
// is dropped, unlike in the reference, which refuses the whole layer: it is
// overwritten in the index file with an invalid entry, so later appends to the data
// file cannot revive it, and reported by Dropped. An entry pointing into the header is
// still an error.
func OpenWritable(data, index *os.File) (_ *Writable, err error) {
	if err := lockLayer(data, index); err != nil {
		return nil, err
	}
	defer unlockOnError(&err, data, index)
	dst, err := data.Stat()
	if err != nil {
		return nil, err
	}
	w := &Writable{data: data}
	if dst.Size() < HeaderSize {
		return nil, corruptf("data file %s: %d bytes, shorter than its header", data.Name(), dst.Size())
	}
	if err := readHeader(data, 0, &w.header); err != nil {
		return nil, inContext(err, "data file %s", data.Name())
	}
	if err := checkWritableData(data, dst.Size(), &w.header); err != nil {
		return nil, err
	}
	if !w.header.IsHeader() || !w.header.IsDataFile() {
		return nil, corruptf("data file %s: header flags 0x%x, want header|data-file bits 0x%x", data.Name(), w.header.Flags, flagsRWData)
	}
	w.dataEnd = roundUp64(dst.Size(), SectorSize)
	if w.header.IsSparse() {
		w.vsize = w.header.VirtualSize
		w.vsizeOld = w.vsize
		w.blockSize = allocUnit(data)
		if err := w.scanSparse(dst.Size()); err != nil {
			return nil, err
		}
		return w, nil
	}
	if index == nil {
		return nil, fmt.Errorf("lsmt: data file %s is not sparse: an index file is required", data.Name())
	}
	ist, err := index.Stat()
	if err != nil {
		return nil, err
	}
	var invalid [SegmentSize]byte
	InvalidSegment.Encode(invalid[:])
	ih, n, err := loadIndexLog(index, ist.Size(), dst.Size(), &w.segs, func(at int64, s Segment) error {
		if w.dropped.Records == 0 {
			w.dropped.FirstAt, w.dropped.First = at, s
		}
		w.dropped.Records++
		if _, err := index.WriteAt(invalid[:], at); err != nil {
			return fmt.Errorf("lsmt: invalidating index record at offset %d: %w", at, err)
		}
		return nil
	})
	if err == nil && w.dropped.Records > 0 {
		err = index.Sync()
	}
	if err != nil {
		return nil, inContext(err, "index file %s (of data file %s)", index.Name(), data.Name())
	}
	if err := checkPair(data, index, &w.header, &ih); err != nil {
		return nil, err
	}
	w.index = index
	w.vsize = ih.VirtualSize
	w.vsizeOld = w.vsize
	w.indexEnd = HeaderSize + n*SegmentSize
	return w, nil
}

// loadIndexLog checks the header of an index file of the given size and replays its
// log into m. It returns the header and the number of whole records. drop, if not nil,
// is told about each record dropped for lying past the data file's end.
func loadIndexLog(r io.ReaderAt, size, dataSize int64, m *segmentMap, drop func(at int64, s Segment) error) (HeaderTrailer, int64, error) {
	var ih HeaderTrailer
	if size < HeaderSize {
		return ih, 0, corruptf("%d bytes, shorter than its header", size)
	}
	if err := readHeader(r, 0, &ih); err != nil {
		return ih, 0, err
	}
	if !ih.IsHeader() || ih.IsDataFile() || ih.IsSealed() {
		return ih, 0, corruptf("header flags 0x%x, want 0x%x (header, index file, not sealed)", ih.Flags, flagsRWIndex)
	}
	if ih.IndexOffset != HeaderSize {
		return ih, 0, corruptf("header index_offset %d, want %d", ih.IndexOffset, HeaderSize)
	}
	n, err := replayIndex(r, size, dataSize, m, drop)
	return ih, n, err
}

func roundUp64(n, m int64) int64 { return (n + m - 1) / m * m }

// replayIndex inserts the log entries of an index file of the given size into m and
// returns how many whole records it holds. dataSize bounds the data entries may map:
// entries past it are skipped and passed to drop.
func replayIndex(r io.ReaderAt, size, dataSize int64, m *segmentMap, drop func(at int64, s Segment) error) (int64, error) {
	n := (size - HeaderSize) / SegmentSize
	if n > maxIndexRecords {
		return 0, corruptf("index log of %d entries exceeds the limit %d", n, maxIndexRecords)
	}
	limit := uint64(dataSize) / SectorSize
	buf := make([]byte, min(n*SegmentSize, 64<<10))
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(buf))/SegmentSize)
		chunk := buf[:k*SegmentSize]
		at := HeaderSize + done*SegmentSize
		if _, err := r.ReadAt(chunk, at); err != nil {
			return 0, fmt.Errorf("lsmt: reading index log at offset %d: %w", at, err)
		}
		for i := 0; i < len(chunk); i += SegmentSize {
			s := DecodeSegment(chunk[i:])
			if !s.Valid() || s.Length == 0 {
				continue
			}
			s.Tag = 0
			if !s.Zeroed && s.MOffset < HeaderSectors {
				return 0, corruptf("index log entry at offset %d %v: data outside the data file's sectors [%d, %d)", at+int64(i), s, HeaderSectors, limit)
			}
			if !s.Zeroed && s.MEnd() > limit {
				if drop != nil {
					if err := drop(at+int64(i), s); err != nil {
						return 0, err
					}
				}
				continue
			}
			m.Insert(s)
		}
		done += k
	}
	return n, nil
}

// scanSparse rebuilds the index of a sparse layer from the data file's allocated
// ranges (SEEK_DATA/SEEK_HOLE from the end of the header).
func (w *Writable) scanSparse(size int64) error {
	fd := int(w.data.Fd())
	pos := int64(HeaderSize)
	for pos < size {
		start, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			return fmt.Errorf("lsmt: SEEK_DATA in %s at %d: %w", w.data.Name(), pos, err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("lsmt: SEEK_HOLE in %s at %d: %w", w.data.Name(), start, err)
		}
		end = min(end, size)
		b := start / SectorSize
		e := (end + SectorSize - 1) / SectorSize
		for b < e {
			l := min(e-b, MaxLength)
			w.segs.Insert(Segment{Offset: uint64(b - HeaderSectors), Length: uint32(l), MOffset: uint64(b)})
			b += l
		}
		pos = end
	}
	return nil
}

// Sparse reports whether the layer is the one-file sparse kind.
func (w *Writable) Sparse() bool { return w.index == nil }

// Header returns the data file's header (uuid, parent, flags).
func (w *Writable) Header() HeaderTrailer { return w.header }

// VirtualSize is the current disk size in bytes.
func (w *Writable) VirtualSize() uint64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.vsize
}

// Size implements blockdev.Target.
func (w *Writable) Size() int64 { return int64(w.VirtualSize()) }

// SetVirtualSize changes the disk size and rewrites it in the headers (update_vsize).
func (w *Writable) SetVirtualSize(v uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errClosed
	}
	w.vsize = v
	return w.storeVirtualSize()
}

func (w *Writable) storeVirtualSize() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], w.vsize)
	if _, err := w.data.WriteAt(b[:], htVirtualSize); err != nil {
		return err
	}
	if w.index != nil {
		if _, err := w.index.WriteAt(b[:], htVirtualSize); err != nil {
			return err
		}
	} else if err := w.data.Truncate(int64(w.vsize) + HeaderSize); err != nil {
		return err
	}
	w.vsizeOld = w.vsize
	return nil
}

func checkAligned(op string, off, n int64) error {
	if off < 0 || off%SectorSize != 0 || n%SectorSize != 0 {
		return fmt.Errorf("lsmt: %s at offset %d length %d: not %d-byte aligned", op, off, n, SectorSize)
	}
	if uint64(off+n)/SectorSize > MaxOffset {
		return fmt.Errorf("lsmt: %s at offset %d length %d: beyond the largest LSMT offset", op, off, n)
	}
	return nil
}

// WriteAt writes p at off; both must be multiples of 512. Writes over 4 MiB are split.
func (w *Writable) WriteAt(p []byte, off int64) (int, error) {
	if err := checkAligned("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errClosed
	}
	if err := w.reserveRecords((int64(len(p)) + MaxIOSize - 1) / MaxIOSize); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, MaxIOSize)
		if err := w.writePiece(p[done:done+n], off+int64(done)); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (w *Writable) writePiece(p []byte, off int64) error {
	var moff int64
	if w.index == nil {
		moff = off + HeaderSize
	} else {
		moff = w.dataEnd
	}
	if _, err := w.data.WriteAt(p, moff); err != nil {
		return fmt.Errorf("lsmt: writing data at offset %d: %w", moff, err)
	}
	s := Segment{Offset: uint64(off) / SectorSize, Length: uint32(len(p) / SectorSize), MOffset: uint64(moff) / SectorSize}
	if w.index != nil {
		w.dataEnd += int64(len(p))
		// Data first, then its index record: a crash between them leaves unreferenced data.
		if err := w.appendRecord(s); err != nil {
			return err
		}
	}
	w.segs.Insert(s)
	w.vsize = max(w.vsize, uint64(off)+uint64(len(p)))
	return nil
}

// reserveRecords refuses an operation that would append more records than the log
// may hold (the limit OpenWritable enforces), before anything is written.
func (w *Writable) reserveRecords(k int64) error {
	if w.index == nil {
		return nil
	}
	if n := (w.indexEnd - HeaderSize) / SegmentSize; n+k > maxIndexRecords {
		return fmt.Errorf("lsmt: index file %s holds %d records, %d more would pass the limit of %d: commit or merge the layer into a new one: %w",
			w.index.Name(), n, k, maxIndexRecords, errIndexFull)
	}
	return nil
}

// Dropped reports the index records OpenWritable dropped (see ReplayDrops).
func (w *Writable) Dropped() ReplayDrops { return w.dropped }

func (w *Writable) appendRecord(s Segment) error {
	var b [SegmentSize]byte
	s.Encode(b[:])
	if _, err := w.index.WriteAt(b[:], w.indexEnd); err != nil {
		return fmt.Errorf("lsmt: appending index record at offset %d: %w", w.indexEnd, err)
	}
	w.indexEnd += SegmentSize
	return nil
}

// Discard drops [off, off+length): it reads as zeros afterwards and masks lower layers.
// Both must be multiples of 512. The part past the virtual size is ignored.
func (w *Writable) Discard(off, length int64) error {
	if err := checkAligned("discard", off, length); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errClosed
	}
	// Nothing past the virtual size is stored or readable: clip there, so a huge
	// range cannot turn into billions of index entries.
	length = min(off+length, int64(w.vsize)) - off
	if length <= 0 {
		return nil
	}
	if err := w.reserveRecords((length/SectorSize + MaxLength - 1) / MaxLength); err != nil {
		return err
	}
	if w.index == nil {
		if err := unix.Fallocate(int(w.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off+HeaderSize, length); err != nil {
			return fmt.Errorf("lsmt: punching hole at %d: %w", off+HeaderSize, err)
		}
	}
	sec, n := uint64(off)/SectorSize, uint64(length)/SectorSize
	for n > 0 {
		l := min(n, MaxLength)
		s := Segment{Offset: sec, Length: uint32(l), Zeroed: true}
		if w.index == nil {
			s.MOffset = sec + HeaderSectors
		} else {
			s.MOffset = uint64(w.dataEnd) / SectorSize
			if err := w.appendRecord(s); err != nil {
				return err
			}
		}
		w.segs.Insert(s)
		sec += l
		n -= l
	}
	return nil
}

// WriteZeroes implements blockdev.ZeroWriter with a discard: both read as zeros.
func (w *Writable) WriteZeroes(off, length int64) error { return w.Discard(off, length) }

// ReadAt reads the layer alone (holes read as zeros). off and len(p) may be any
// values; reads past the virtual size return io.EOF.
func (w *Writable) ReadAt(p []byte, off int64) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return 0, errClosed
	}
	return readSized(p, off, int64(w.vsize), func(p []byte, off int64) error {
		return w.readLocked(p, off, nil)
	})
}

// readLocked reads [off, off+len(p)) of this layer, filling holes with hole (zeros if
// nil). The caller holds w.mu.
func (w *Writable) readLocked(p []byte, off int64, hole func([]byte, int64) error) error {
	var buf [16]Segment
	start := uint64(off) / SectorSize
	end := (uint64(off) + uint64(len(p)) + SectorSize - 1) / SectorSize
	segs := w.segs.Lookup(start, end, buf[:0])
	return readMapped(p, off, segs, func(uint8) io.ReaderAt { return w.data }, hole)
}

// Segments returns the current index, sorted.
func (w *Writable) Segments() []Segment {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.segs.All()
}

// Flush implements blockdev.Target: Sync.
func (w *Writable) Flush() error { return w.Sync() }

// Sync makes every completed write durable: data file first, then the index file, so
// no record of a write completed before Sync points at data that is not on disk
// (records of later writes may; OpenWritable drops them if their data is missing). The lock is held
// only to store a changed virtual size: reads and writes go on during the fsyncs
// (writes completing meanwhile may or may not be included, as for any FLUSH).
func (w *Writable) Sync() error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return errClosed
	}
	var err error
	if w.vsize != w.vsizeOld {
		err = w.storeVirtualSize()
	}
	w.mu.Unlock()
	if err != nil {
		return err
	}
	return w.syncFiles()
}

func (w *Writable) syncFiles() error {
	if err := w.data.Sync(); err != nil {
		return err
	}
	if w.index != nil {
		return w.index.Sync()
	}
	return nil
}

func (w *Writable) syncLocked() error {
	if w.vsize != w.vsizeOld {
		if err := w.storeVirtualSize(); err != nil {
			return err
		}
	}
	return w.syncFiles()
}

// Close syncs the layer and closes its files.
func (w *Writable) Close() error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errClosed
	}
	err := w.syncLocked()
	w.closed = true
	err = errors.Join(err, w.data.Close())
	if w.index != nil {
		err = errors.Join(err, w.index.Close())
	}
	return err
}

// CloseSeal turns the data file into a sealed read-only layer in place (overlaybd-commit
// --seal): the sorted index is appended at the end of the data, padded to 512 bytes
// with invalid entries (the reference leaves heap garbage there; the trailer counts
// only the valid entries either way), then a trailer with the data header's uuid and
// parent. The header keeps its writable flags. The layer is closed afterwards; the
// index file is left alone.
func (w *Writable) CloseSeal(userTag []byte) error {
	if len(userTag) > MaxUserTagSize {
		return fmt.Errorf("lsmt: user tag is %d bytes, at most %d allowed", len(userTag), MaxUserTagSize)
	}
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errClosed
	}
	segs := w.segs.All()
	for i := range segs {
		segs[i].Tag = 0
	}
	indexOff := w.dataEnd
	if w.index == nil {
		indexOff = int64(w.vsize) + HeaderSize
	}
	buf := encodeSegments(make([]byte, 0, roundUp(len(segs)*SegmentSize, SectorSize)+HeaderSize), segs)
	for len(buf)%SectorSize != 0 {
		buf = encodeSegments(buf, []Segment{InvalidSegment})
	}
	t := HeaderTrailer{
		Flags:       flagsSealedTrailer | w.header.Flags&FlagSparse,
		IndexOffset: uint64(indexOff),
		IndexSize:   uint64(len(segs)),
		VirtualSize: w.vsize,
		UUID:        w.header.UUID,
		ParentUUID:  w.header.ParentUUID,
		UserTag:     userTag,
	}
	tb, err := t.MarshalBinary()
	if err != nil {
		return err
	}
	buf = append(buf, tb...)
	if _, err := w.data.WriteAt(buf, indexOff); err != nil {
		return fmt.Errorf("lsmt: sealing %s: %w", w.data.Name(), err)
	}
	if err := w.data.Truncate(indexOff + int64(len(buf))); err != nil {
		return err
	}
	if err := w.syncLocked(); err != nil {
		return err
	}
	w.closed = true
	err = w.data.Close()
	if w.index != nil {
		err = errors.Join(err, w.index.Close())
	}
	return err
}
