// Package gzindex reads a gzip file at random offsets of its uncompressed stream
// through the reference's gzip index ("ddgzidx", turboOCI-apply --gz_index_path;
// docs/overlaybd-format.md §12.2): checkpoints at deflate block boundaries, each with
// the 32 KiB window before it, so that inflating can start at any of them.
package gzindex

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/obd-project/obd/crc32c"
)

const (
	headerSize = 333
	entrySize  = 29
	windowSize = 32768
	magic      = "ddgzidx\x00"
	readBuf    = 64 << 10
)

// entry is one checkpoint: the uncompressed offset DePos starts in the compressed
// stream at byte EnPos, Bits bits before it.
type entry struct {
	DePos, EnPos, WinPos int64
	Bits                 uint8
	WinLen               uint32
}

// Reader is the uncompressed content of a gzip file, read through its index.
type Reader struct {
	gz       io.ReaderAt
	idx      io.ReaderAt
	name     string
	size     int64 // uncompressed
	gzSize   int64
	zlibDict bool // windows are zlib-compressed
	entries  []entry

	// chunks caches the last inflated spans between checkpoints: the kernel reads a
	// file in small pieces, each of which would inflate its span again.
	mu     sync.Mutex
	chunks []chunk // most recent first
}

// chunk is the uncompressed stream from checkpoint entry to the next one.
type chunk struct {
	entry int
	data  []byte
}

const (
	cachedChunks  = 4
	maxChunkBytes = 16 << 20 // longer spans (an index of few checkpoints) are streamed
)

// Open reads the index idx (idxSize bytes) of the gzip file gz (gzSize bytes); name
// is used in error messages. The index must have been made for this gzip file (its
// recorded size must match).
func Open(gz io.ReaderAt, gzSize int64, idx io.ReaderAt, idxSize int64, name string) (*Reader, error) {
	fail := func(off int, format string, a ...any) error {
		return fmt.Errorf("gzip index %s: offset %d: %s", name, off, fmt.Sprintf(format, a...))
	}
	h := make([]byte, headerSize)
	if idxSize < headerSize {
		return nil, fail(0, "%d bytes, shorter than the %d-byte header", idxSize, headerSize)
	}
	if _, err := idx.ReadAt(h, 0); err != nil {
		return nil, fmt.Errorf("gzip index %s: reading the header: %w", name, err)
	}
	le := binary.LittleEndian
	switch {
	case string(h[:8]) != magic:
		return nil, fail(0, "magic %q, want %q", h[:8], magic)
	case crc32c.Checksum(h[:329]) != le.Uint32(h[329:]):
		return nil, fail(329, "header checksum %#x, computed %#x", le.Uint32(h[329:]), crc32c.Checksum(h[:329]))
	case h[8] != 1:
		return nil, fail(8, "major version %d, want 1", h[8])
	case h[10] > 1:
		return nil, fail(10, "window compression %d, want 0 (none) or 1 (zlib)", h[10])
	case int32(le.Uint32(h[17:])) != windowSize:
		return nil, fail(17, "window %d, want %d", int32(le.Uint32(h[17:])), windowSize)
	case int32(le.Uint32(h[21:])) != entrySize:
		return nil, fail(21, "entry size %d, want %d", int32(le.Uint32(h[21:])), entrySize)
	}
	num, gzs, ifs := int64(le.Uint64(h[25:])), int64(le.Uint64(h[33:])), int64(le.Uint64(h[41:]))
	usize, start, area := int64(le.Uint64(h[49:])), int64(le.Uint64(h[313:])), int64(le.Uint64(h[321:]))
	switch {
	case ifs != idxSize:
		return nil, fail(41, "index file size %d, the file has %d", ifs, idxSize)
	case gzs != gzSize:
		return nil, fail(33, "made for a gzip file of %d bytes, this one has %d", gzs, gzSize)
	case num < 1 || num > idxSize/entrySize*64:
		return nil, fail(25, "%d entries", num)
	case usize < 0:
		return nil, fail(49, "uncompressed size %d", usize)
	case start < headerSize || area <= 0 || start > idxSize-area || start+area != idxSize:
		return nil, fail(313, "entries at [%d, +%d) of a %d-byte file, want them to end the file", start, area, idxSize)
	}
	raw := make([]byte, area)
	if _, err := idx.ReadAt(raw, start); err != nil {
		return nil, fmt.Errorf("gzip index %s: reading the entries: %w", name, err)
	}
	r := &Reader{gz: gz, idx: idx, name: name, size: usize, gzSize: gzSize, zlibDict: h[10] == 1}
	if r.zlibDict {
		zr, err := zlib.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fail(int(start), "entries: %v", err)
		}
		if raw, err = io.ReadAll(io.LimitReader(zr, num*entrySize+1)); err != nil {
			return nil, fail(int(start), "entries: %v", err)
		}
	}
	if int64(len(raw)) != num*entrySize {
		return nil, fail(int(start), "%d bytes of entries, want %d × %d", len(raw), num, entrySize)
	}
	for i := range num {
		b := raw[i*entrySize:]
		e := entry{DePos: int64(le.Uint64(b)), EnPos: int64(le.Uint64(b[8:])), WinPos: int64(le.Uint64(b[16:])), Bits: b[24], WinLen: le.Uint32(b[25:])}
		switch {
		case e.Bits > 7 || e.EnPos < 1 || e.EnPos >= gzSize || e.DePos < 0 || e.DePos > usize:
			return nil, fail(int(start), "entry %d %+v outside the gzip file (%d bytes, %d uncompressed)", i, e, gzSize, usize)
		case i > 0 && e.DePos <= r.entries[i-1].DePos:
			return nil, fail(int(start), "entry %d at uncompressed offset %d after %d: not increasing", i, e.DePos, r.entries[i-1].DePos)
		case e.WinPos < headerSize || e.WinPos > start-int64(e.WinLen) || !r.zlibDict && e.WinLen != windowSize:
			return nil, fail(int(start), "entry %d: window [%d, +%d) outside the windows area [%d, %d)", i, e.WinPos, e.WinLen, headerSize, start)
		}
		r.entries = append(r.entries, e)
	}
	return r, nil
}

// Size is the uncompressed size.
func (r *Reader) Size() int64 { return r.size }

// window returns checkpoint e's 32 KiB dictionary.
func (r *Reader) window(e entry) ([]byte, error) {
	b := make([]byte, e.WinLen)
	if _, err := r.idx.ReadAt(b, e.WinPos); err != nil {
		return nil, fmt.Errorf("gzip index %s: window at %d: %w", r.name, e.WinPos, err)
	}
	if !r.zlibDict {
		return b, nil
	}
	zr, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("gzip index %s: window at %d: %w", r.name, e.WinPos, err)
	}
	w, err := io.ReadAll(io.LimitReader(zr, windowSize+1))
	if err != nil || len(w) != windowSize {
		return nil, fmt.Errorf("gzip index %s: window at %d: %d bytes, %v; want %d", r.name, e.WinPos, len(w), err, windowSize)
	}
	return w, nil
}

// ReadAt reads the uncompressed stream: the span of the last checkpoint at or before
// off, inflated once and cached (a read across checkpoints, or in a span too long to
// cache, inflates from the checkpoint and drops what lies before off). Reads past the
// end are short (io.EOF).
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("gzip %s: read at negative offset %d", r.name, off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := p
	if rest := r.size - off; int64(len(p)) > rest {
		want = p[:rest]
	}
	i := sort.Search(len(r.entries), func(i int) bool { return r.entries[i].DePos > off }) - 1
	if i < 0 {
		return 0, fmt.Errorf("gzip index %s: no checkpoint at or before offset %d (the first is at %d)", r.name, off, r.entries[0].DePos)
	}
	e := r.entries[i]
	end := r.size
	if i+1 < len(r.entries) {
		end = r.entries[i+1].DePos
	}
	if end-e.DePos <= maxChunkBytes && off+int64(len(want)) <= end {
		data, err := r.chunk(i, end)
		if err != nil {
			return 0, err
		}
		n := copy(want, data[off-e.DePos:])
		if len(want) < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	fr, err := r.inflateFrom(i)
	if err != nil {
		return 0, err
	}
	defer fr.Close()
	if _, err := io.CopyN(io.Discard, fr, off-e.DePos); err != nil {
		return 0, fmt.Errorf("gzip %s: inflating from checkpoint %d (offset %d) to %d: %w", r.name, i, e.DePos, off, err)
	}
	n, err := io.ReadFull(fr, want)
	if err != nil {
		return n, fmt.Errorf("gzip %s: inflating %d bytes at %d: %w", r.name, len(want), off, err)
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// inflateFrom starts inflating at checkpoint i.
func (r *Reader) inflateFrom(i int) (io.ReadCloser, error) {
	e := r.entries[i]
	dict, err := r.window(e)
	if err != nil {
		return nil, err
	}
	src := io.Reader(bufio.NewReaderSize(io.NewSectionReader(r.gz, e.EnPos, r.gzSize-e.EnPos), readBuf))
	if e.Bits > 0 {
		src = &bitShifter{r: bufio.NewReaderSize(io.NewSectionReader(r.gz, e.EnPos-1, r.gzSize-e.EnPos+1), readBuf), shift: 8 - e.Bits}
	}
	return flate.NewReaderDict(src, dict), nil
}

// chunk returns the uncompressed bytes from checkpoint i to end, from the cache or
// inflated (and cached).
func (r *Reader) chunk(i int, end int64) ([]byte, error) {
	r.mu.Lock()
	for k, c := range r.chunks {
		if c.entry == i {
			copy(r.chunks[1:k+1], r.chunks[:k])
			r.chunks[0] = c
			r.mu.Unlock()
			return c.data, nil
		}
	}
	r.mu.Unlock()
	fr, err := r.inflateFrom(i)
	if err != nil {
		return nil, err
	}
	defer fr.Close()
	data := make([]byte, end-r.entries[i].DePos)
	if _, err := io.ReadFull(fr, data); err != nil {
		return nil, fmt.Errorf("gzip %s: inflating checkpoint %d (offset %d, %d bytes): %w", r.name, i, r.entries[i].DePos, len(data), err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.chunks {
		if c.entry == i { // another read inflated it meanwhile
			return c.data, nil
		}
	}
	r.chunks = append([]chunk{{i, data}}, r.chunks...)
	if len(r.chunks) > cachedChunks {
		r.chunks = r.chunks[:cachedChunks]
	}
	return data, nil
}

// bitShifter yields the stream of r starting shift bits into its first byte
// (zlib's inflatePrime with the previous byte's top bits).
type bitShifter struct {
	r     io.ByteReader
	shift uint8
	cur   byte
	init  bool
	eof   bool
}

func (b *bitShifter) ReadByte() (byte, error) {
	if b.eof {
		return 0, io.EOF
	}
	if !b.init {
		c, err := b.r.ReadByte()
		if err != nil {
			return 0, err
		}
		b.cur, b.init = c, true
	}
	lo := b.cur >> b.shift
	c, err := b.r.ReadByte()
	if errors.Is(err, io.EOF) {
		b.eof = true // the last byte's remaining bits, zero-filled above
		return lo, nil
	}
	if err != nil {
		return 0, err
	}
	b.cur = c
	return lo | c<<(8-b.shift), nil
}

func (b *bitShifter) Read(p []byte) (int, error) {
	for i := range p {
		c, err := b.ReadByte()
		if err != nil {
			return i, err
		}
		p[i] = c
	}
	return len(p), nil
}
