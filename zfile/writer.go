package zfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/obd-project/obd/crc32c"
)

// Options configure a Writer. The zero value writes what `overlaybd-commit -z`
// writes: LZ4, 4 KiB blocks, per-block CRCs, GOMAXPROCS workers.
type Options struct {
	Algorithm Algorithm // LZ4 (default when 0) or Zstd (level 3)
	BlockSize int       // power of two in [4 KiB, 64 KiB]; 0 means 4 KiB
	NoCRC     bool      // omit per-block CRCs (the reference tools always write them)
	Workers   int       // compressing goroutines; <= 0 means GOMAXPROCS
	// NoHeaderOverwrite keeps the initial header (flags 0x13, as overlaybd-zfile
	// writes) even when the destination is an io.WriterAt. Otherwise the header is
	// rewritten at Close with the index fields filled in (flags 0x1B).
	NoHeaderOverwrite bool
}

func (o Options) normalized() (Options, error) {
	if o.Algorithm == 0 {
		o.Algorithm = LZ4
	}
	if o.Algorithm != LZ4 && o.Algorithm != Zstd {
		return o, fmt.Errorf("zfile: unsupported algorithm %v", o.Algorithm)
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.BlockSize < MinBlockSize || o.BlockSize > MaxBlockSize || !isPow2(uint32(o.BlockSize)) {
		return o, fmt.Errorf("zfile: block size %d, want a power of two in [%d, %d]", o.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	return o, nil
}

// Writer compresses a stream into a ZFile. Input is cut into batches of blocks;
// batches are compressed in parallel and written in order, so the output is
// byte-identical whatever the number of workers.
type Writer struct {
	w         io.Writer
	opts      Options
	rec       Record
	base      int64 // offset of the header in w, for the final header overwrite
	overwrite bool  // rewrite the header at Close through io.WriterAt

	batch int     // bytes per batch: a whole number of blocks
	cur   *[]byte // batch being filled
	raw   int64   // uncompressed bytes accepted
	comp  *blockCompressor

	// Output state: owned by the output goroutine while it runs (parallel mode).
	off  int64    // bytes written to w
	lens []uint32 // jump table

	mu  sync.Mutex
	err error // first error; sticky

	jobs    chan *job
	pending chan *job
	outDone chan struct{}
	workers sync.WaitGroup
	srcBufs sync.Pool // *[]byte with capacity batch
	outBufs sync.Pool // *[]byte for compressed batches
	closed  bool
}

// job is one batch of consecutive blocks.
type job struct {
	src   *[]byte
	out   *[]byte  // compressed blocks (with CRCs), back to back
	lens  []uint32 // on-disk length of each block in out
	err   error
	ready chan struct{}
}

// batchBytes is the uncompressed size handed to a worker at once: large enough that
// synchronisation costs little next to compression, small enough to keep all
// workers busy on modest inputs.
const batchBytes = 256 << 10

// NewWriter writes the ZFile header to w and returns a Writer for the content.
// If w is also an io.WriterAt, Close rewrites the header with the final index
// fields (unless opts.NoHeaderOverwrite); if w is an io.Seeker the header's position
// is taken from it, else it is assumed to be at offset 0. With more than one
// worker, Close must be called to stop the worker goroutines.
func NewWriter(w io.Writer, opts Options) (*Writer, error) {
	o, err := opts.normalized()
	if err != nil {
		return nil, err
	}
	zw := &Writer{w: w, opts: o, batch: max(batchBytes, o.BlockSize)}
	zw.rec = Record{
		Flags:     FlagHeader | FlagDataFile | FlagDigest,
		BlockSize: uint32(o.BlockSize),
		Algorithm: o.Algorithm,
		Verify:    !o.NoCRC,
	}
	if _, ok := w.(io.WriterAt); ok && !o.NoHeaderOverwrite {
		zw.overwrite = true
		if s, ok := w.(io.Seeker); ok {
			// A pipe is an *os.File too, but cannot seek nor WriteAt: keep its header.
			pos, err := s.Seek(0, io.SeekCurrent)
			zw.base, zw.overwrite = pos, err == nil
		}
	}
	zw.srcBufs.New = func() any { b := make([]byte, 0, zw.batch); return &b }
	zw.outBufs.New = func() any { b := make([]byte, 0, zw.batch+zw.batch/4); return &b }
	if _, err := w.Write(zw.rec.encode()); err != nil {
		return nil, fmt.Errorf("zfile: write header: %w", err)
	}
	zw.off = HeaderSize
	if o.Workers == 1 {
		if zw.comp, err = newBlockCompressor(o.Algorithm); err != nil {
			return nil, err
		}
	} else {
		comps := make([]*blockCompressor, o.Workers)
		for i := range comps {
			if comps[i], err = newBlockCompressor(o.Algorithm); err != nil {
				return nil, err
			}
		}
		zw.jobs = make(chan *job, o.Workers)
		zw.pending = make(chan *job, 2*o.Workers)
		zw.outDone = make(chan struct{})
		for _, c := range comps {
			zw.workers.Add(1)
			go zw.work(c)
		}
		go zw.output()
	}
	zw.cur = zw.srcBufs.Get().(*[]byte)
	return zw, nil
}

func (zw *Writer) setErr(err error) {
	zw.mu.Lock()
	if zw.err == nil {
		zw.err = err
	}
	zw.mu.Unlock()
}

func (zw *Writer) getErr() error {
	zw.mu.Lock()
	defer zw.mu.Unlock()
	return zw.err
}

// compressJob compresses the batch block by block: each block's on-disk form is
// its compressed data plus, with CRCs on, the salted CRC32C of that data.
func (zw *Writer) compressJob(c *blockCompressor, j *job) {
	src := *j.src
	j.out = zw.outBufs.Get().(*[]byte)
	out := (*j.out)[:0]
	for len(src) > 0 {
		n := min(len(src), zw.opts.BlockSize)
		start := len(out)
		var err error
		if out, err = c.appendBlock(out, src[:n]); err != nil {
			j.err = err
			return
		}
		if zw.rec.Verify {
			out = binary.LittleEndian.AppendUint32(out, crc32c.Salted(out[start:]))
		}
		j.lens = append(j.lens, uint32(len(out)-start))
		src = src[n:]
	}
	*j.out = out
}

func (zw *Writer) work(c *blockCompressor) {
	defer zw.workers.Done()
	for j := range zw.jobs {
		zw.compressJob(c, j)
		close(j.ready)
	}
}

// output writes finished batches in submission order.
func (zw *Writer) output() {
	defer close(zw.outDone)
	for j := range zw.pending {
		<-j.ready
		zw.finish(j)
	}
}

// finish writes a compressed batch and recycles its buffers.
func (zw *Writer) finish(j *job) {
	*j.src = (*j.src)[:0]
	zw.srcBufs.Put(j.src)
	if j.err != nil {
		zw.setErr(j.err)
	} else if zw.getErr() == nil {
		if _, err := zw.w.Write(*j.out); err != nil {
			zw.setErr(fmt.Errorf("zfile: write blocks %d.. at %d: %w", len(zw.lens), zw.off, err))
		} else {
			zw.lens = append(zw.lens, j.lens...)
			zw.off += int64(len(*j.out))
		}
	}
	if j.out != nil {
		zw.outBufs.Put(j.out)
	}
}

// submit hands a batch over; the Writer no longer owns src.
func (zw *Writer) submit(src *[]byte) {
	j := &job{src: src}
	if zw.comp != nil {
		zw.compressJob(zw.comp, j)
		zw.finish(j)
		return
	}
	j.ready = make(chan struct{})
	zw.pending <- j
	zw.jobs <- j
}

// Write buffers p and compresses every full batch of blocks.
func (zw *Writer) Write(p []byte) (int, error) {
	if zw.closed {
		return 0, errors.New("zfile: write after close")
	}
	if err := zw.getErr(); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		cur := *zw.cur
		k := copy(cur[len(cur):zw.batch], p)
		*zw.cur = cur[:len(cur)+k]
		p = p[k:]
		n += k
		if len(*zw.cur) == zw.batch {
			zw.submit(zw.cur)
			zw.cur = zw.srcBufs.Get().(*[]byte)
		}
	}
	zw.raw += int64(n)
	return n, zw.getErr()
}

// ReadFrom reads r to its end straight into the Writer's batches, sparing the
// copy through an intermediate buffer that io.Copy into Write makes.
func (zw *Writer) ReadFrom(r io.Reader) (int64, error) {
	if zw.closed {
		return 0, errors.New("zfile: write after close")
	}
	var total int64
	for {
		if err := zw.getErr(); err != nil {
			return total, err
		}
		cur := *zw.cur
		k, err := r.Read(cur[len(cur):zw.batch])
		*zw.cur = cur[:len(cur)+k]
		total += int64(k)
		zw.raw += int64(k)
		if len(*zw.cur) == zw.batch {
			zw.submit(zw.cur)
			zw.cur = zw.srcBufs.Get().(*[]byte)
		}
		if err == io.EOF {
			return total, zw.getErr()
		}
		if err != nil {
			return total, err
		}
	}
}

// Close compresses the last partial block and writes the jump table and trailer,
// then rewrites the header if the destination allows it. It does not close w.
func (zw *Writer) Close() error {
	if zw.closed {
		return zw.getErr()
	}
	zw.closed = true
	if len(*zw.cur) > 0 {
		zw.submit(zw.cur)
	}
	zw.cur = nil
	if zw.comp == nil {
		close(zw.jobs)
		close(zw.pending)
		<-zw.outDone
		zw.workers.Wait()
	}
	if err := zw.getErr(); err != nil {
		return err
	}
	table := make([]byte, 4*len(zw.lens))
	for i, l := range zw.lens {
		binary.LittleEndian.PutUint32(table[4*i:], l)
	}
	rec := zw.rec
	rec.IndexOffset = uint64(zw.off)
	rec.IndexSize = uint64(len(zw.lens))
	rec.OriginalSize = uint64(zw.raw)
	rec.IndexCRC = crc32c.Checksum(table)
	rec.Flags = FlagDataFile | FlagSealed | FlagDigest
	if _, err := zw.w.Write(table); err != nil {
		return zw.fail(fmt.Errorf("zfile: write jump table at %d: %w", zw.off, err))
	}
	if _, err := zw.w.Write(rec.encode()); err != nil {
		return zw.fail(fmt.Errorf("zfile: write trailer: %w", err))
	}
	zw.off += int64(len(table)) + HeaderSize
	if wa, ok := zw.w.(io.WriterAt); ok && zw.overwrite {
		rec.Flags = FlagHeader | FlagDataFile | FlagHeaderOverwrite | FlagDigest
		if _, err := wa.WriteAt(rec.encode(), zw.base); err != nil {
			return zw.fail(fmt.Errorf("zfile: overwrite header at %d: %w", zw.base, err))
		}
	}
	return nil
}

// Size is the size of the ZFile written; it is known once Close has returned nil
// (0 before).
func (zw *Writer) Size() int64 {
	if !zw.closed || zw.getErr() != nil {
		return 0
	}
	return zw.off
}

// UncompressedSize is the number of bytes accepted by Write.
func (zw *Writer) UncompressedSize() int64 { return zw.raw }

func (zw *Writer) fail(err error) error {
	zw.setErr(err)
	return err
}

// Compress writes src as a ZFile to dst and returns the number of uncompressed bytes.
func Compress(dst io.Writer, src io.Reader, opts Options) (int64, error) {
	zw, err := NewWriter(dst, opts)
	if err != nil {
		return 0, err
	}
	n, err := zw.ReadFrom(src)
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// Decompress writes the uncompressed content of the ZFile src (size bytes) to dst.
func Decompress(dst io.Writer, src io.ReaderAt, size int64, opts ...OpenOption) (int64, error) {
	zr, err := Open(src, size, append([]OpenOption{WithBlockCache(0)}, opts...)...)
	if err != nil {
		return 0, err
	}
	return zr.WriteTo(dst)
}
