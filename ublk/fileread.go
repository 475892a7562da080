package ublk

import (
	"errors"
	"unsafe"

	"github.com/obd-project/obd/blockdev"
	"golang.org/x/sys/unix"
)

// Backing-file reads on the queue's ring. When the Target is a blockdev.FileMapper
// and a READ's range maps to local files, the queue thread issues the reads as
// io_uring READs on its own ring, next to the COMMIT_AND_FETCHes, instead of a
// blocking pread per request in the Target: chained to the tag's COMMIT in one
// submission (queueLinked) where the ring can skip the CQEs of successful reads,
// else committed when all its pieces are in. A failed ring read is served again
// through ReadAt. Other data (remote, compressed) keeps the Target's ReadAt and
// the serve policy, so a slow remote read never stalls these.

// fileReadUserData marks the CQE of a backing-file read: the low 16 bits are
// the tag, bits 16-31 the piece. linkedUserData marks a read chained to its
// tag's COMMIT (with fileReadUserData) or that COMMIT (without); bits 40-47 then
// hold the chain's generation, so that a late CQE of an earlier chain of the
// same tag is recognised.
const (
	fileReadUserData = 1 << 33
	linkedUserData   = 1 << 34
	linkGenShift     = 40
)

// ringReadMinCopy is the smallest READ read on the ring when the data is then
// copied through the tag buffer (no zero copy), unless its reads can be linked
// to the COMMIT and its files are on a file system whose cached pages io_uring
// reads without blocking (nowaitFS). Measured in the VM on 6.12
// (BenchmarkImageVsLoop, 4 KiB random reads at QD32, ring vs pread in the same
// runs): with the files on ext4, linked ring reads cost 0.80x [0.67-1.73]
// pread's serving CPU per request (median [spread] of 5 runs; 0.63x of the
// queue thread's CPU in a profile); on tmpfs, which 6.12's io_uring cannot read
// without blocking (every read goes to an io-wq worker), 2x. 1 MiB reads cost
// less on the ring on both (0.77x on tmpfs, 0.85x on ext4). With zero copy every
// size gains or ties, so there is no minimum.
const ringReadMinCopy = 64 << 10

// nowaitFS reports whether io_uring reads cached pages of files on the file
// system with statfs f_type typ inline (IOCB_NOWAIT): the local file systems
// an image directory sits on. Elsewhere a small read on the ring would cost an
// io-wq worker's wake-up.
func nowaitFS(typ int64) bool {
	switch typ {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC:
		return true
	}
	return false
}

// smallOnRing reports whether a copy-path request smaller than ringReadMinCopy
// may be read on the ring: its pieces are linkable and all on nowaitFS files.
func (q *queue) smallOnRing(pieces []readPiece) bool {
	if !q.linkReads || len(pieces) > maxLinkedPieces {
		return false
	}
	for _, p := range pieces {
		ok, known := q.nowaitFds[p.fd]
		if !known {
			var st unix.Statfs_t
			ok = unix.Fstatfs(p.fd, &st) == nil && nowaitFS(st.Type)
			if q.nowaitFds == nil {
				q.nowaitFds = make(map[int]bool)
			}
			q.nowaitFds[p.fd] = ok // the FileMapper keeps its fds open while served
		}
		if !ok {
			return false
		}
	}
	return true
}

// maxLinkedPieces bounds the reads chained to one commit: a link runs its reads
// one after another, so a more fragmented request has its pieces read in
// parallel and is committed when the last CQE comes in.
const maxLinkedPieces = 4

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
	linked  bool  // a chain (reads, then the COMMIT) is in flight
	gen     uint8 // the chain's generation, in its user data
}

// fileRead is what startFileRead did with a READ.
type fileRead int

const (
	readNotMapped fileRead = iota // not (wholly) in local files: serve it as usual
	readQueued                    // reads queued: commit when fileReadDone says so
	readLinked                    // reads and their COMMIT queued as one chain
	readHoles                     // nothing to read (only holes): commit now
)

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

// startFileRead maps READ tag to file extents and queues their reads: linked
// to the tag's COMMIT_AND_FETCH when the ring can skip the CQEs of successful
// reads (q.linkReads) and the request has at most maxLinkedPieces pieces.
func (q *queue) startFileRead(tag uint16, d ioDesc) (how fileRead, result int32, err error) {
	n := int64(d.NrSectors) << 9
	// Compare in sectors first: a forged start sector must not wrap the offset.
	if d.op() != opRead || n == 0 || n > int64(q.bufSize) || d.StartSector > uint64(q.be.size)>>9 {
		return readNotMapped, 0, nil
	}
	small := !q.autoBuf && n < ringReadMinCopy
	if small && !q.linkReads {
		return readNotMapped, 0, nil
	}
	if q.autoBuf && d.OpFlags&ioFlagNeedRegBuf != 0 {
		return readNotMapped, 0, nil // no registered buffer: user copy through ReadAt
	}
	t := &q.reads[tag]
	ext, ok := q.be.files.MapFile(t.ext[:0], int64(d.StartSector)<<9, n)
	t.ext = ext
	if !ok || len(ext) > maxReadPieces {
		return readNotMapped, 0, nil
	}
	buf := q.buf(tag)
	t.pieces, t.pending, t.result = t.pieces[:0], 0, int32(n)
	pos := 0
	for _, e := range ext {
		if e.Length <= 0 || int64(pos)+e.Length > n {
			return readNotMapped, 0, nil // a mapper breaking its contract: let ReadAt answer
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
	if int64(pos) != n || small && !q.smallOnRing(t.pieces) {
		return readNotMapped, 0, nil
	}
	q.ringReads.Add(1)
	if q.autoBuf {
		q.zeroCopyN.Add(1)
	}
	switch {
	case len(t.pieces) == 0:
		return readHoles, t.result, nil
	case q.linkReads && len(t.pieces) <= maxLinkedPieces:
		return readLinked, 0, q.queueLinked(tag)
	}
	for i := range t.pieces {
		if err := q.queueRead(tag, i); err != nil {
			return readQueued, 0, err
		}
	}
	t.pending = len(t.pieces)
	return readQueued, 0, nil
}

// queueLinked queues tag's reads and its COMMIT_AND_FETCH (result: the whole
// request) as one chain, in one submission: the kernel runs the COMMIT only
// after every read has returned all its bytes, so the request takes one ring
// round trip. A read that fails or comes back short (io_uring fails a link on
// a short read) cancels the rest of the chain, the COMMIT included, and posts
// its CQE: linkBroken then serves the tag through ReadAt. Every read but the
// last skips its CQE on success (IOSQE_CQE_SKIP_SUCCESS); the last posts one
// in copy mode, where the kernel writes the tag buffer until then (the queue
// must not release the buffers under a read in flight), and skips it too with
// zero copy, where the reads land in the request's pages. (So at QD1 a copy-mode
// request still costs two io_uring_enter calls, the second one woken by that
// CQE; at QD32 both batch: 0.06 calls per request.)
func (q *queue) queueLinked(tag uint16) error {
	t := &q.reads[tag]
	// The chain must not be split across two submissions: a COMMIT submitted
	// on its own would complete the request before its data is in.
	if need := uint32(len(t.pieces)) + 1; q.ring.free() < need {
		if err := q.ring.submit(0); err != nil {
			return err
		}
		if q.ring.free() < need {
			return errRingFull
		}
	}
	t.gen++
	t.linked = true
	last := len(t.pieces) - 1
	for i := range t.pieces {
		s, err := q.ring.getSQE()
		if err != nil {
			return err
		}
		q.fillRead(s, tag, i)
		s.Flags |= iosqeIOLink
		if i < last || q.autoBuf {
			s.Flags |= iosqeCQESkipSuccess
		}
		s.UserData |= linkedUserData | uint64(t.gen)<<linkGenShift
	}
	s, err := q.ring.getSQE()
	if err != nil {
		return err
	}
	q.fillCmd(s, nrCommitAndFetch, tag, t.result)
	s.UserData |= linkedUserData | uint64(t.gen)<<linkGenShift
	q.linkedN.Add(1)
	return nil
}

// linkedDone handles a CQE of tag's chain (c.UserData has linkedUserData):
// chainDone when the last read of a copy-mode chain completed in full (its
// COMMIT follows in the kernel), broken when a read failed or came back short
// (or the COMMIT was cancelled), which the caller answers by serving the tag
// through ReadAt. CQEs of a chain already dealt with report neither.
func (q *queue) linkedDone(c cqe) (tag uint16, chainDone, broken bool) {
	tag = uint16(c.UserData)
	t := &q.reads[tag]
	if !t.linked || uint8(c.UserData>>linkGenShift) != t.gen {
		return tag, false, false
	}
	t.linked = false
	if c.UserData&fileReadUserData != 0 {
		i := int(c.UserData>>16) & 0xffff
		if i == len(t.pieces)-1 && c.Res == int32(t.pieces[i].n) {
			return tag, true, false
		}
	}
	q.rereadN.Add(1)
	return tag, false, true
}

func (q *queue) queueRead(tag uint16, i int) error {
	s, err := q.sqe()
	if err != nil {
		return err
	}
	q.fillRead(s, tag, i)
	return nil
}

// fillRead makes s the read of piece i of tag.
func (q *queue) fillRead(s *sqe, tag uint16, i int) {
	p := &q.reads[tag].pieces[i]
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
}

// fileReadDone records the completion c of a piece; done reports that the tag's
// last piece came in, with the COMMIT result. A read cut short goes on from
// where it stopped; at the end of the file the rest reads as zeros (as the
// Target's ReadAt does). A failed read makes result errIO: the caller then
// serves the tag through ReadAt.
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
