package ublk

import (
	"github.com/obd-project/obd/blockdev"
	"golang.org/x/sys/unix"
)

// backend is a Target with its optional capabilities resolved once (through
// wrappers, see blockdev.Unwrapper), to choose the device parameters.
type backend struct {
	t        blockdev.Target
	size     int64
	readOnly bool
	caps     blockdev.Caps
	// files maps reads to local files for the queue's ring (fileread.go). Only
	// t's own: a wrapper's ReadAt may count or check what it reads, so it opts in
	// by implementing MapFile itself, never through Unwrap.
	files blockdev.FileMapper
}

func newBackend(t blockdev.Target) *backend {
	caps := blockdev.CapsOf(t)
	files, _ := t.(blockdev.FileMapper)
	return &backend{t: t, size: t.Size(), readOnly: caps.ReadOnly, caps: caps, files: files}
}

const (
	errIO         = -int32(unix.EIO)
	errNotSupp    = -int32(unix.EOPNOTSUPP)
	errBadRequest = -int32(unix.EINVAL)
)

// serve runs one request against the target and returns the COMMIT result:
// bytes done for READ/WRITE, 0 for the others, or -errno. Any Target error is
// -EIO; the request is never completed with wrong data.
func (b *backend) serve(d ioDesc, buf []byte) int32 {
	off := int64(d.StartSector) << 9
	n := int64(d.NrSectors) << 9
	op := d.op()
	if (op == opRead || op == opWrite) && n > int64(len(buf)) {
		return errBadRequest // larger than the buffer the kernel was told about
	}
	switch op {
	case opRead, opWrite, opDiscard, opWriteZeroes:
		// Compare in sectors first: a forged start sector must not wrap off.
		if d.StartSector > uint64(b.size)>>9 || off+n > b.size {
			return errIO
		}
	}
	switch op {
	case opRead:
		if got, err := b.t.ReadAt(buf[:n], off); err != nil || int64(got) != n {
			return errIO
		}
		return int32(n)
	case opWrite:
		if b.readOnly {
			return errIO
		}
		if got, err := b.t.WriteAt(buf[:n], off); err != nil || int64(got) != n {
			return errIO
		}
		if d.OpFlags&ioFlagFUA != 0 && b.t.Flush() != nil {
			return errIO
		}
		return int32(n)
	case opFlush:
		if b.t.Flush() != nil {
			return errIO
		}
		return 0
	case opDiscard:
		if !b.caps.Discard {
			return errNotSupp
		}
		if blockdev.Discard(b.t, off, n) != nil {
			return errIO
		}
		return 0
	case opWriteZeroes:
		if b.readOnly {
			return errIO
		}
		if blockdev.WriteZeroes(b.t, off, n) != nil {
			return errIO
		}
		return 0
	}
	return errNotSupp
}

// deviceParams are the block-device parameters for b: 512-byte logical and
// 4 KiB physical blocks; a volatile cache with FUA when writable (so FLUSH and
// FUA reach the target); discard/write-zeroes limits when the target has them.
func deviceParams(b *backend, maxIOBytes int) params {
	p := params{Types: paramTypeBasic}
	p.Basic = paramBasic{
		LogicalBSShift:  9,
		PhysicalBSShift: 12,
		IOOptShift:      12,
		IOMinShift:      9,
		MaxSectors:      uint32(maxIOBytes >> 9),
		DevSectors:      uint64(b.size) >> 9,
	}
	if b.readOnly {
		p.Basic.Attrs |= attrReadOnly
	} else {
		p.Basic.Attrs |= attrVolatileCache | attrFUA
	}
	if !b.readOnly && (b.caps.Discard || b.caps.WriteZeroes) {
		p.Types |= paramTypeDiscard
		p.Discard = paramDiscard{Granularity: 4096, MaxDiscardSegments: 1, MaxWriteZeroesSectors: 1 << 22}
		if b.caps.Discard {
			p.Discard.MaxDiscardSectors = 1 << 22
		}
	}
	return p
}
