package trace

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/obd-project/obd/crc32c"
)

// Magic starts every binary trace: the CRC32 (IEEE) of "Container Image Trace Format".
const Magic uint32 = 0xC2EF1820

// HeaderSize and RecordSize are the sizes of the reference's TraceHeader and
// TraceFormat structs in their native x86_64 layout (padding included).
const (
	HeaderSize = 24
	RecordSize = 24
)

// MaxIOSize is the reference replay buffer: it preads a record into a 1 MiB buffer
// without checking the count, so a record above this size must never be written for
// the reference daemon (it would overflow), and Replay splits reads at this size.
const MaxIOSize = 1 << 20

// ErrCorrupt is wrapped by every error about malformed trace bytes.
var ErrCorrupt = errors.New("trace: corrupt")

// Op is the operation of a trace record.
type Op byte

// Record operations. The reference only ever records reads; replay skips writes.
const (
	OpRead  Op = 'R'
	OpWrite Op = 'W'
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "R"
	case OpWrite:
		return "W"
	}
	return fmt.Sprintf("Op(%#x)", byte(o))
}

// Record is one traced I/O: Count bytes at Offset of lower layer Layer.
type Record struct {
	Op     Op
	Layer  uint32
	Count  uint64
	Offset int64
}

// Record layout (TraceFormat): op at 0, 3 padding bytes, u32 layer at 4, u64 count
// at 8, i64 offset at 16.
func encodeRecord(b []byte, r Record) {
	b[0] = byte(r.Op)
	b[1], b[2], b[3] = 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], r.Layer)
	binary.LittleEndian.PutUint64(b[8:], r.Count)
	binary.LittleEndian.PutUint64(b[16:], uint64(r.Offset))
}

func decodeRecord(b []byte) Record {
	return Record{
		Op:     Op(b[0]),
		Layer:  binary.LittleEndian.Uint32(b[4:]),
		Count:  binary.LittleEndian.Uint64(b[8:]),
		Offset: int64(binary.LittleEndian.Uint64(b[16:])),
	}
}

// Header layout (TraceHeader): u32 magic at 0, 4 padding bytes, u64 data_size at 8,
// u32 checksum at 16, 4 padding bytes.
func encodeHeader(b []byte, dataSize uint64, checksum uint32) {
	clear(b[:HeaderSize])
	binary.LittleEndian.PutUint32(b[0:], Magic)
	binary.LittleEndian.PutUint64(b[8:], dataSize)
	binary.LittleEndian.PutUint32(b[16:], checksum)
}

// IsTrace reports whether head (the first bytes of a file) starts a binary trace, the
// test the reference uses to tell a trace from a file list: a full header whose magic
// matches.
func IsTrace(head []byte) bool {
	return len(head) >= HeaderSize && binary.LittleEndian.Uint32(head) == Magic
}

// readChunk is how many records ReadTrace reads per ReadAt.
const readChunk = 4096

// ReadTrace decodes a binary trace of size bytes. It checks what the reference
// checks — magic, size == data_size + 24 and the raw CRC32C chained over the stored
// record bytes (padding included, which the reference leaves uninitialised) — and
// additionally that data_size is a whole number of records.
func ReadTrace(r io.ReaderAt, size int64) ([]Record, error) {
	if size < HeaderSize {
		return nil, fmt.Errorf("%w: file size %d is smaller than the %d-byte header", ErrCorrupt, size, HeaderSize)
	}
	var hdr [HeaderSize]byte
	if err := readFull(r, hdr[:], 0); err != nil {
		return nil, fmt.Errorf("trace: reading header: %w", err)
	}
	if m := binary.LittleEndian.Uint32(hdr[0:]); m != Magic {
		return nil, fmt.Errorf("%w: header magic at offset 0: expected %#08x, found %#08x", ErrCorrupt, Magic, m)
	}
	dataSize := binary.LittleEndian.Uint64(hdr[8:])
	if dataSize != uint64(size-HeaderSize) {
		return nil, fmt.Errorf("%w: header data_size at offset 8: expected %d (file size %d - %d), found %d",
			ErrCorrupt, size-HeaderSize, size, HeaderSize, dataSize)
	}
	if dataSize%RecordSize != 0 {
		return nil, fmt.Errorf("%w: header data_size at offset 8: %d is not a multiple of the %d-byte record",
			ErrCorrupt, dataSize, RecordSize)
	}
	want := binary.LittleEndian.Uint32(hdr[16:])
	n := int64(dataSize / RecordSize)

	// Allocate for all records only once the last one is known to be readable, so a
	// size overstating the bytes behind r cannot cause a large allocation.
	if n > 0 {
		var last [RecordSize]byte
		if err := readFull(r, last[:], size-RecordSize); err != nil {
			return nil, fmt.Errorf("trace: reading last record at offset %d: %w", size-RecordSize, err)
		}
	}
	recs := make([]Record, 0, n)
	buf := make([]byte, min(n, readChunk)*RecordSize)
	var crc uint32
	for i := int64(0); i < n; {
		k := min(n-i, readChunk)
		b := buf[:k*RecordSize]
		off := HeaderSize + i*RecordSize
		if err := readFull(r, b, off); err != nil {
			return nil, fmt.Errorf("trace: reading records at offset %d: %w", off, err)
		}
		crc = crc32c.Update(crc, b)
		for j := 0; j < len(b); j += RecordSize {
			recs = append(recs, decodeRecord(b[j:]))
		}
		i += k
	}
	if crc != want {
		return nil, fmt.Errorf("%w: header checksum at offset 16: expected %#08x (raw crc32c of %d records), found %#08x",
			ErrCorrupt, crc, n, want)
	}
	return recs, nil
}

// readFull reads exactly len(b) bytes at off; io.EOF with a full read is success.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// WriteTrace writes recs as a binary trace with the bytes the reference writes:
// zeroed padding, data_size = 24 × len(recs), and the raw CRC32C of the records. The
// reference writes the header twice (checksum 0, then the final one in place); the
// resulting file is the same as writing the final header first, which a plain
// io.Writer allows. Records are written as given: see Compact for keeping them within
// the reference's 1 MiB replay buffer.
func WriteTrace(w io.Writer, recs []Record) error {
	var b [RecordSize]byte
	var crc uint32
	for _, r := range recs {
		encodeRecord(b[:], r)
		crc = crc32c.Update(crc, b[:])
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	encodeHeader(b[:], uint64(len(recs))*RecordSize, crc)
	if _, err := bw.Write(b[:]); err != nil {
		return fmt.Errorf("trace: writing header: %w", err)
	}
	for i, r := range recs {
		encodeRecord(b[:], r)
		if _, err := bw.Write(b[:]); err != nil {
			return fmt.Errorf("trace: writing record %d: %w", i, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("trace: writing records: %w", err)
	}
	return nil
}
