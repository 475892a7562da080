package ublk

import (
	"errors"
	"unsafe"

	"github.com/obd-project/obd/blockdev"
)

// Backing-file reads on the queue's ring. When the Target is a blockdev.FileMapper
// and a READ's range maps to local files, the queue thread issues the reads as
// io_uring READs on its own ring, next to the COMMIT_AND_FETCHes, instead of a
// blocking pread per request in the Target, and commits the tag when all its
// pieces are in. Other data (remote, compressed) keeps the Target's ReadAt and
// the serve policy, so a slow remote read never stalls these.

// fileReadUserData marks the CQE of a backing-file read: the low 16 bits are
// the tag, bits 16-31 the piece.
const fileReadUserData = 1 << 33

// ringReadMinCopy is the smallest READ read on the ring when the data is then
// copied through the tag buffer (no zero copy): in the VM benchmark
// (BenchmarkImageVsLoop, ring vs pread) 1 MiB reads cost less CPU on the ring,
// 4 KiB ones more (two ring round trips instead of one pread and one).
// With zero copy every size gains or ties, so there is no minimum.
const ringReadMinCopy = 64 << 10

// maxReadPieces bounds the pieces of one request read on the ring; a request
// more fragmented than that goes to ReadAt (so the piece fits in its user data).
const maxReadPieces = 1 << 12

// readPiece is one file read of a request: n bytes at file offset off into the
// tag buffer at bufOff.
type readPiece struct {
	fd     int
	off    int64
	bufOff int
	n      int
}

// tagRead is the ring-read state of one tag.
type tagRead struct {
	ext     []blockdev.FileExtent // MapFile's scratch, reused
	pieces  []readPiece
	pending int   // reads in flight
	result  int32 // COMMIT result once pending reaches 0
}

// sqe returns a free SQE, first submitting the queued ones if the ring is full
// (file reads can outnumber the ring's tag-sized SQ).
func (q *queue) sqe() (*sqe, error) {
	s, err := q.ring.getSQE()
	if errors.Is(err, errRingFull) {
		if err = q.ring.submit(0); err != nil {
			return nil, err
		}
		s, err = q.ring.getSQE()
	}
	return s, err
}

// startFileRead maps READ tag to file extents and queues their reads. It reports
// false when the request is not (wholly) in local files: serve it as usual. With
// done, nothing was left to read (only holes): commit result now.
func (q *queue) startFileRead(tag uint16, d ioDesc) (started, done bool, result int32, err error) {
	n := int64(d.NrSectors) << 9
	// Compare in sectors first: a forged start sector must not wrap the offset.
	if d.op() != opRead || n == 0 || n > int64(q.bufSize) || d.StartSector > uint64(q.be.size)>>9 {
		return false, false, 0, nil
	}
	if !q.autoBuf && n < ringReadMinCopy {
		return false, false, 0, nil
	}
	if q.autoBuf && d.OpFlags&ioFlagNeedRegBuf != 0 {
		return false, false, 0, nil // no registered buffer: user copy through ReadAt
	}
	t := &q.reads[tag]
	ext, ok := q.be.files.MapFile(t.ext[:0], int64(d.StartSector)<<9, n)
	t.ext = ext
	if !ok || len(ext) > maxReadPieces {
		return false, false, 0, nil
	}
	buf := q.buf(tag)
	t.pieces, t.pending, t.result = t.pieces[:0], 0, int32(n)
	pos := 0
	for _, e := range ext {
		if e.Length <= 0 || int64(pos)+e.Length > n {
			return false, false, 0, nil // a mapper breaking its contract: let ReadAt answer
		}
		switch {
		case e.Fd < 0 && q.autoBuf: // the request's pages are not ours to clear: read zeros
			t.pieces = append(t.pieces, readPiece{fd: q.zeroFd, bufOff: pos, n: int(e.Length)})
		case e.Fd < 0:
			clear(buf[pos : pos+int(e.Length)])
		default:
			t.pieces = append(t.pieces, readPiece{fd: e.Fd, off: e.Offset, bufOff: pos, n: int(e.Length)})
		}
		pos += int(e.Length)
	}
	if int64(pos) != n {
		return false, false, 0, nil
	}
	for i := range t.pieces {
		if err := q.queueRead(tag, i); err != nil {
			return true, false, 0, err
		}
	}
	t.pending = len(t.pieces)
	q.ringReads.Add(1)
	if q.autoBuf {
		q.zeroCopyN.Add(1)
	}
	return true, t.pending == 0, t.result, nil
}

func (q *queue) queueRead(tag uint16, i int) error {
	p := &q.reads[tag].pieces[i]
	s, err := q.sqe()
	if err != nil {
		return err
	}
	s.Fd = int32(p.fd)
	if q.autoBuf { // straight into the request's pages: fixed buffer <tag>, addressed from 0
		s.Opcode = ioringOpReadFixed
		s.BufIndex = tag
		s.Addr = uint64(p.bufOff)
	} else {
		s.Opcode = ioringOpRead
		s.Addr = uint64(uintptr(unsafe.Pointer(&q.buf(tag)[p.bufOff])))
	}
	s.Len = uint32(p.n)
	s.Off = uint64(p.off)
	s.UserData = fileReadUserData | uint64(i)<<16 | uint64(tag)
	return nil
}

// fileReadDone records the completion c of a piece; done reports that the tag's
// last piece came in, with the COMMIT result. A read cut short goes on from
// where it stopped; at the end of the file the rest reads as zeros (as the
// Target's ReadAt does); a failed read fails the request with EIO.
func (q *queue) fileReadDone(c cqe) (tag uint16, done bool, result int32, err error) {
	tag = uint16(c.UserData)
	t := &q.reads[tag]
	i := int(c.UserData>>16) & 0xffff
	p := &t.pieces[i]
	switch {
	case c.Res < 0:
		t.result = errIO
	case c.Res == 0 && q.autoBuf && p.fd != q.zeroFd:
		p.fd, p.off = q.zeroFd, 0
		return tag, false, 0, q.queueRead(tag, i)
	case c.Res == 0 && q.autoBuf:
		t.result = errIO // /dev/zero at its end: cannot happen
	case c.Res == 0:
		clear(q.buf(tag)[p.bufOff : p.bufOff+p.n])
	case int(c.Res) < p.n:
		p.off += int64(c.Res)
		p.bufOff += int(c.Res)
		p.n -= int(c.Res)
		return tag, false, 0, q.queueRead(tag, i)
	}
	t.pending--
	return tag, t.pending == 0, t.result, nil
}
