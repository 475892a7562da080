package tarwrap

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Header returns the 1536-byte wrapper header for a payload of n bytes, byte for
// byte as `overlaybd-commit -t` writes it (libtar field formatting, mtime 0, uid/gid
// 0 named "root", mode 0100644, ustar size field 0 with the size in a pax record).
func Header(n int64) []byte {
	buf := make([]byte, HeaderSize)
	rec := paxRecord("size", strconv.FormatInt(n, 10))

	pax := buf[:BlockSize]
	copy(pax[offName:], "overlaybd.pax")
	octalNoNul(pax[offSize:offSize+12], int64(len(rec)))
	pax[offTypeflag] = 'x'
	copy(pax[offMagic:], "ustar\x00")
	copy(pax[offVersion:], "00")
	octal(pax[offChksum:offChksum+8], checksum(pax))
	copy(buf[BlockSize:], rec)

	h := buf[2*BlockSize:]
	copy(h[offName:], "overlaybd.commit")
	octal(h[offMode:offMode+8], 0o100644)
	octal(h[offUID:offUID+8], 0)
	octal(h[offGID:offGID+8], 0)
	octalNoNul(h[offSize:offSize+12], 0)
	octalNoNul(h[offMtime:offMtime+12], 0)
	h[offTypeflag] = '0'
	copy(h[offMagic:], "ustar\x00")
	copy(h[offVersion:], "00")
	copy(h[offUname:], "root")
	copy(h[offGname:], "root")
	octal(h[offChksum:offChksum+8], checksum(h))
	return buf
}

// Trailer returns what follows a payload of n bytes: zero padding to a block
// boundary and the two zero blocks that end a tar archive.
func Trailer(n int64) []byte {
	pad := (BlockSize - n%BlockSize) % BlockSize
	return make([]byte, pad+2*BlockSize)
}

// WrappedSize is the size of the wrapped file for a payload of n bytes.
func WrappedSize(n int64) int64 { return HeaderSize + n + int64(len(Trailer(n))) }

// paxRecord formats "<len> key=value\n", where len counts the whole record.
func paxRecord(key, value string) string {
	n := len(key) + len(value) + 3
	n += len(strconv.Itoa(n))
	rec := strconv.Itoa(n) + " " + key + "=" + value + "\n"
	if len(rec) != n { // the length's own digits pushed it over a power of ten
		rec = strconv.Itoa(len(rec)) + " " + key + "=" + value + "\n"
	}
	return rec
}

// octal writes v as libtar's int_to_oct: right-aligned in len(f)-2 digits, then a
// space and a NUL.
func octal(f []byte, v int64) {
	s := fmt.Sprintf("%*o ", len(f)-2, v)
	copy(f, s)
	f[len(f)-1] = 0
}

// octalNoNul writes v as libtar's int_to_oct_nonull: right-aligned in len(f)-1
// digits, then a space.
func octalNoNul(f []byte, v int64) {
	copy(f, fmt.Sprintf("%*o ", len(f)-1, v))
}

// checksum is the unsigned header sum with the checksum field read as spaces.
func checksum(h []byte) int64 {
	var sum int64
	for i, b := range h[:BlockSize] {
		if i >= offChksum && i < offChksum+8 {
			b = ' '
		}
		sum += int64(b)
	}
	return sum
}

// Writer wraps a payload of a size known in advance; it needs only an io.Writer.
type Writer struct {
	w       io.Writer
	size    int64
	written int64
	closed  bool
}

// NewWriter writes the wrapper header for a payload of exactly size bytes.
func NewWriter(w io.Writer, size int64) (*Writer, error) {
	if size < 0 {
		return nil, fmt.Errorf("tarwrap: negative payload size %d", size)
	}
	if _, err := w.Write(Header(size)); err != nil {
		return nil, fmt.Errorf("tarwrap: write header: %w", err)
	}
	return &Writer{w: w, size: size}, nil
}

// Write writes payload bytes; more than the declared size is an error.
func (tw *Writer) Write(p []byte) (int, error) {
	if tw.closed {
		return 0, errors.New("tarwrap: write after close")
	}
	if int64(len(p)) > tw.size-tw.written {
		return 0, fmt.Errorf("tarwrap: payload exceeds the declared %d bytes", tw.size)
	}
	n, err := tw.w.Write(p)
	tw.written += int64(n)
	return n, err
}

// Close writes the padding and end-of-archive blocks. It fails if fewer bytes than
// declared were written. It does not close the underlying writer.
func (tw *Writer) Close() error {
	if tw.closed {
		return nil
	}
	tw.closed = true
	if tw.written != tw.size {
		return fmt.Errorf("tarwrap: wrote %d payload bytes, declared %d", tw.written, tw.size)
	}
	_, err := tw.w.Write(Trailer(tw.size))
	return err
}

// WriteWriterAt is what StreamWriter writes to (an *os.File, for example).
type WriteWriterAt interface {
	io.Writer
	io.WriterAt
}

// StreamWriter wraps a payload of unknown size: it reserves the header area, and at
// Close writes the trailer and then the header at offset 0 of the destination.
// It implements io.WriterAt in payload coordinates, so a payload writer that patches
// its own header (zfile.Writer) works through it.
type StreamWriter struct {
	w       WriteWriterAt
	written int64
	closed  bool
}

// NewStreamWriter writes a placeholder header to w, which must be positioned at offset 0.
func NewStreamWriter(w WriteWriterAt) (*StreamWriter, error) {
	if _, err := w.Write(make([]byte, HeaderSize)); err != nil {
		return nil, fmt.Errorf("tarwrap: reserve header: %w", err)
	}
	return &StreamWriter{w: w}, nil
}

// Write appends payload bytes.
func (sw *StreamWriter) Write(p []byte) (int, error) {
	if sw.closed {
		return 0, errors.New("tarwrap: write after close")
	}
	n, err := sw.w.Write(p)
	sw.written += int64(n)
	return n, err
}

// WriteAt overwrites payload bytes already written (off is payload-relative).
func (sw *StreamWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > sw.written {
		return 0, fmt.Errorf("tarwrap: WriteAt [%d, %d) outside the %d payload bytes written", off, off+int64(len(p)), sw.written)
	}
	return sw.w.WriteAt(p, HeaderSize+off)
}

// Close writes the trailer, then the final header. It does not close w.
func (sw *StreamWriter) Close() error {
	if sw.closed {
		return nil
	}
	sw.closed = true
	if _, err := sw.w.Write(Trailer(sw.written)); err != nil {
		return fmt.Errorf("tarwrap: write trailer: %w", err)
	}
	if _, err := sw.w.WriteAt(Header(sw.written), 0); err != nil {
		return fmt.Errorf("tarwrap: write header: %w", err)
	}
	return nil
}
