// Package tarwrap reads and writes the tar wrapper around OverlayBD registry blobs
// (docs/overlaybd-format.md §5): a layer blob that is a valid one-file OCI tar layer,
// whose single file is the ZFile or LSMT payload.
//
// Layout written by `overlaybd-commit -t` (and by this package):
//
//	block 0   pax header "overlaybd.pax" (typeflag 'x')
//	block 1   pax record "<len> size=<n>\n"
//	block 2   ustar header "overlaybd.commit", size field 0 (the real size is in the pax record)
//	block 3.. payload, zero padding to 512, two zero blocks
package tarwrap

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/obd-project/obd/internal/blobio"
)

// BlockSize is the tar block size.
const BlockSize = 512

// HeaderSize is the size of the wrapper in front of the payload as written here.
const HeaderSize = 3 * BlockSize

// ErrFormat is wrapped by errors about a tar wrapper that is detected but malformed.
var ErrFormat = errors.New("tarwrap: invalid tar wrapper")

// Header field offsets (POSIX ustar).
const (
	offName     = 0
	offMode     = 100
	offUID      = 108
	offGID      = 116
	offSize     = 124
	offMtime    = 136
	offChksum   = 148
	offTypeflag = 156
	offMagic    = 257
	offVersion  = 263
	offUname    = 265
	offGname    = 297
)

// IsWrapped reports whether head (the first 512 bytes of a file) is a header the
// reference accepts as a wrapper: magic "ustar\0", version "00" and a valid signed
// or unsigned checksum. A GNU "ustar  " header is not a wrapper.
func IsWrapped(head []byte) bool {
	if len(head) < BlockSize {
		return false
	}
	h := head[:BlockSize]
	return string(h[offMagic:offMagic+6]) == "ustar\x00" &&
		string(h[offVersion:offVersion+2]) == "00" && checksumOK(h)
}

func checksumOK(h []byte) bool {
	stored, ok := parseOctal(h[offChksum : offChksum+8])
	if !ok {
		return false
	}
	var unsigned, signed int64
	for i, b := range h[:BlockSize] {
		if i >= offChksum && i < offChksum+8 {
			b = ' '
		}
		unsigned += int64(b)
		signed += int64(int8(b))
	}
	return stored == unsigned || stored == signed
}

// parseOctal parses a NUL/space padded octal field.
func parseOctal(f []byte) (int64, bool) {
	s := string(bytes.Trim(f, " \x00"))
	if s == "" {
		return 0, true
	}
	v, err := strconv.ParseUint(s, 8, 63)
	return int64(v), err == nil
}

// parseNumeric parses a size field: octal, or GNU base-256 when the top bit is set.
func parseNumeric(f []byte) (int64, bool) {
	if len(f) > 0 && f[0]&0x80 != 0 {
		if f[0] != 0x80 { // negative or too large
			return 0, false
		}
		var v int64
		for _, b := range f[1:] {
			if v > (1<<63-1)>>8 {
				return 0, false
			}
			v = v<<8 | int64(b)
		}
		return v, true
	}
	return parseOctal(f)
}

// Payload is the wrapped file: reads are shifted past the tar headers.
type Payload struct {
	*io.SectionReader
	r      io.ReaderAt
	offset int64
}

// Offset is the file offset of the payload's first byte.
func (p *Payload) Offset() int64 { return p.offset }

// Evict forwards Evict (zfile.Evicter) to the underlying ReaderAt, shifted to
// file offsets; blobio.ErrNotEvictable when it has no cache (a local file).
func (p *Payload) Evict(off, n int64) error {
	return blobio.Evict(p.r, p.offset+off, n)
}

// Open looks for a tar wrapper at the start of r (size bytes). If there is none,
// it returns ok == false and no error: the file is used raw. If a wrapper is found
// but malformed (unsupported header chain, payload past the end of the file), it
// returns an error naming the field. The payload forwards Evict to r (Payload.Evict).
func Open(r io.ReaderAt, size int64) (payload io.ReaderAt, payloadSize int64, ok bool, err error) {
	p, err := OpenPayload(r, size)
	if p == nil || err != nil {
		return nil, 0, false, err
	}
	return p, p.Size(), true, nil
}

// OpenPayload is Open returning the concrete Payload (nil when not wrapped).
func OpenPayload(r io.ReaderAt, size int64) (*Payload, error) {
	if size < BlockSize {
		return nil, nil
	}
	h := make([]byte, BlockSize)
	if n, err := r.ReadAt(h, 0); n < BlockSize {
		return nil, fmt.Errorf("tarwrap: read header at 0: %w", errOrEOF(err))
	}
	if !IsWrapped(h) {
		return nil, nil
	}
	var paxSize int64 = -1
	var err error
	base := int64(BlockSize)
	switch t := h[offTypeflag]; t {
	case 'x':
		n, ok := parseNumeric(h[offSize : offSize+12])
		if !ok {
			return nil, fmt.Errorf("%w: pax header at 0: bad size field %q", ErrFormat, h[offSize:offSize+12])
		}
		// The reference always puts the payload at 1536, so the pax data must fit one block.
		if n > BlockSize {
			return nil, fmt.Errorf("%w: pax header at 0: %d bytes of records, at most %d supported", ErrFormat, n, BlockSize)
		}
		if size < 3*BlockSize {
			return nil, fmt.Errorf("%w: file of %d bytes ends inside the tar headers (need %d)", ErrFormat, size, 3*BlockSize)
		}
		rec := make([]byte, BlockSize)
		if k, err := r.ReadAt(rec, BlockSize); k < BlockSize {
			return nil, fmt.Errorf("tarwrap: read pax records at %d: %w", BlockSize, errOrEOF(err))
		}
		if paxSize, err = parsePaxSize(rec[:n]); err != nil {
			return nil, err
		}
		if k, err := r.ReadAt(h, 2*BlockSize); k < BlockSize {
			return nil, fmt.Errorf("tarwrap: read header at %d: %w", 2*BlockSize, errOrEOF(err))
		}
		if !checksumOK(h) {
			return nil, fmt.Errorf("%w: header at %d: checksum mismatch", ErrFormat, 2*BlockSize)
		}
		if t := h[offTypeflag]; t != '0' && t != 0 {
			return nil, fmt.Errorf("%w: header at %d: typeflag %q, want a regular file ('0')", ErrFormat, 2*BlockSize, t)
		}
		base = 3 * BlockSize
	case '0', 0:
	default:
		return nil, fmt.Errorf("%w: header at 0: typeflag %q, want 'x' (pax) or '0' (regular file)", ErrFormat, t)
	}
	hsize, ok := parseNumeric(h[offSize : offSize+12])
	if !ok {
		return nil, fmt.Errorf("%w: header at %d: bad size field %q", ErrFormat, base-BlockSize, h[offSize:offSize+12])
	}
	psize := hsize
	if paxSize > 0 { // as the reference: a pax size of 0 falls back to the header size
		psize = paxSize
	}
	if psize > size-base {
		return nil, fmt.Errorf("%w: payload of %d bytes at offset %d does not fit in the %d-byte file", ErrFormat, psize, base, size)
	}
	return &Payload{SectionReader: io.NewSectionReader(r, base, psize), r: r, offset: base}, nil
}

func errOrEOF(err error) error {
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parsePaxSize returns the "size" record of pax data (-1 when absent).
func parsePaxSize(data []byte) (int64, error) {
	size := int64(-1)
	off := BlockSize // records start at file offset 512
	for len(data) > 0 {
		if data[0] == 0 { // NUL padding after the last record
			break
		}
		sp := bytes.IndexByte(data, ' ')
		if sp <= 0 {
			return 0, fmt.Errorf("%w: pax record at %d: no length", ErrFormat, off)
		}
		n, err := strconv.Atoi(string(data[:sp]))
		if err != nil || n <= sp+1 || n > len(data) || data[n-1] != '\n' {
			return 0, fmt.Errorf("%w: pax record at %d: bad length %q", ErrFormat, off, data[:sp])
		}
		kv := data[sp+1 : n-1]
		eq := bytes.IndexByte(kv, '=')
		if eq < 0 {
			return 0, fmt.Errorf("%w: pax record at %d: no '='", ErrFormat, off)
		}
		if string(kv[:eq]) == "size" {
			v, err := strconv.ParseInt(string(kv[eq+1:]), 10, 64)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("%w: pax record at %d: bad size %q", ErrFormat, off, kv[eq+1:])
			}
			size = v
		}
		data = data[n:]
		off += n
	}
	return size, nil
}
