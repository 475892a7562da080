package lsmt

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// A sparse writable layer has no index: at open its map is rebuilt from the data file's
// allocated ranges, and the file system allocates whole blocks. Two kinds of state held
// only in memory would change what the disk reads after a reopen (daemon restart, ublk
// recovery, commit or seal after either): a discard, since a hole means "not in the
// upper" and the lowers would show again; and the unwritten sectors of a partly written
// block, which are allocated and would read as zeros instead of the lowers' bytes.
//
// Under lower layers, Image therefore keeps the data file itself the truth, in the
// format the reference tools read (no side log):
//   - a write that covers a file-system block only partly first fills the rest of the
//     block with the bytes the disk reads there (read-modify-write from the upper and
//     the lowers), unless the upper maps them already;
//   - a discard or write-zeroes punches a hole where the lowers read zeros and writes
//     real zeros where a lower maps data.
//
// Every allocated block then holds exactly the disk's bytes, and the in-memory map
// never differs from the rescanned one in what it reads, so reads, commit, seal and
// merge agree before and after a reopen. Without lowers a hole reads zeros anyway and
// the layer's own WriteAt and Discard are used unchanged.
//
// Limit: on a file system whose allocation unit is larger than the 4 KiB header (ZFS
// records), the first block holds the header and so always reads from the upper.

// allocUnit is the granularity at which f's file system allocates (and SEEK_DATA
// reports) data: st_blksize when it is a sane power of two, else 4 KiB.
func allocUnit(f *os.File) int64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 4096
	}
	b := int64(st.Blksize)
	if b < SectorSize || b > 1<<20 || b&(b-1) != 0 {
		return 4096
	}
	return b
}

// sparseOp is one change to a sparse upper, applied under its lock.
type sparseOp struct {
	off, n int64  // virtual bytes
	data   []byte // bytes to write; nil: zeros (unless punch)
	punch  bool   // drop the range from the upper; only where the lowers read zeros
	fills  []blockFill
}

// blockFill is the rest of a partly covered block, written with the disk's current
// bytes before the op itself. lower holds the lowers' bytes of the range, read without
// the upper's lock; nil when the upper mapped the whole range at planning time.
type blockFill struct {
	off, n int64
	lower  []byte
}

// errNeedLower makes Image re-plan a write when the upper stopped mapping a fill range
// whose lower bytes were not read.
var errNeedLower = errors.New("lsmt: block fill needs the lower layers' bytes")

// blockFills returns the head and tail ranges of the blocks [off, off+n) touches but
// does not cover, clipped to the disk (vsize) and to the end of the header.
func (w *Writable) blockFills(off, n int64, vsize int64) []blockFill {
	g := w.blockSize
	var fills []blockFill
	fs, fe := off+HeaderSize, off+n+HeaderSize
	if head := max(fs-fs%g-HeaderSize, 0); head < off {
		fills = append(fills, blockFill{off: head, n: off - head})
	}
	if tail := min(roundUp64(fe, g)-HeaderSize, vsize); off+n < tail {
		fills = append(fills, blockFill{off: off + n, n: tail - off - n})
	}
	return fills
}

// mapsAll reports whether the upper maps every sector of [off, off+n) with data.
func (w *Writable) mapsAll(off, n int64) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.mapsAllLocked(off, n)
}

func (w *Writable) mapsAllLocked(off, n int64) bool {
	var buf [4]Segment
	pos, end := uint64(off)/SectorSize, uint64(off+n)/SectorSize
	for _, s := range w.segs.Lookup(pos, end, buf[:0]) {
		if s.Offset != pos || s.Zeroed {
			return false
		}
		pos = s.End()
	}
	return pos >= end
}

// applySparse applies ops in order. It checks first that every fill without lower
// bytes is still mapped by the upper, and changes nothing otherwise (errNeedLower).
func (w *Writable) applySparse(ops []sparseOp) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errClosed
	}
	for _, op := range ops {
		for _, f := range op.fills {
			if f.lower == nil && !w.mapsAllLocked(f.off, f.n) {
				return errNeedLower
			}
		}
	}
	for _, op := range ops {
		if op.punch {
			if err := unix.Fallocate(int(w.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, op.off+HeaderSize, op.n); err != nil {
				return fmt.Errorf("lsmt: punching hole at %d in %s: %w", op.off+HeaderSize, w.data.Name(), err)
			}
			w.segs.Delete(uint64(op.off)/SectorSize, uint64(op.off+op.n)/SectorSize)
			continue
		}
		for _, f := range op.fills {
			if w.mapsAllLocked(f.off, f.n) {
				continue
			}
			buf := make([]byte, f.n)
			err := w.readLocked(buf, f.off, func(p []byte, off int64) error {
				if f.lower == nil {
					return errNeedLower
				}
				copy(p, f.lower[off-f.off:])
				return nil
			})
			if err != nil {
				return err
			}
			if err := w.writeSparseLocked(buf, f.off); err != nil {
				return err
			}
		}
		if op.data != nil {
			if err := w.writeSparseLocked(op.data, op.off); err != nil {
				return err
			}
			continue
		}
		zeros := make([]byte, min(op.n, 1<<20))
		for done := int64(0); done < op.n; {
			k := min(op.n-done, int64(len(zeros)))
			if err := w.writeSparseLocked(zeros[:k], op.off+done); err != nil {
				return err
			}
			done += k
		}
	}
	return nil
}

// writeSparseLocked writes p at virtual offset off of a sparse layer and maps it.
func (w *Writable) writeSparseLocked(p []byte, off int64) error {
	moff := off + HeaderSize
	if _, err := w.data.WriteAt(p, moff); err != nil {
		return fmt.Errorf("lsmt: writing data at offset %d of %s: %w", moff, w.data.Name(), err)
	}
	sec, n := uint64(off)/SectorSize, uint64(len(p))/SectorSize
	for n > 0 {
		l := min(n, MaxLength)
		w.segs.Insert(Segment{Offset: sec, Length: uint32(l), MOffset: sec + HeaderSectors})
		sec += l
		n -= l
	}
	w.vsize = max(w.vsize, uint64(off)+uint64(len(p)))
	return nil
}

// sparseUnder reports whether writes go through the sparse-upper path.
func (im *Image) sparseUnder() bool {
	return im.upper != nil && im.upper.Sparse() && len(im.lowers) > 0
}

// applySparse reads the lowers' bytes of the fills that need them (always, or when the
// upper does not map the range), then applies ops to the upper. A fill that raced with
// a discard is planned again once, then with every lower range read.
func (im *Image) applySparse(ops []sparseOp, always bool) error {
	u := im.upper
	for attempt := 0; ; attempt++ {
		for i := range ops {
			for j := range ops[i].fills {
				f := &ops[i].fills[j]
				if f.lower != nil || (!always && attempt == 0 && u.mapsAll(f.off, f.n)) {
					continue
				}
				f.lower = make([]byte, f.n)
				if err := im.readLower(f.lower, f.off); err != nil {
					return err
				}
			}
		}
		err := u.applySparse(ops)
		if errors.Is(err, errNeedLower) && attempt == 0 {
			continue
		}
		return err
	}
}

// writeSparse is WriteAt for a sparse upper over lowers: 4 MiB pieces, each with the
// rest of its first and last blocks filled from the disk.
func (im *Image) writeSparse(p []byte, off int64) (int, error) {
	if err := checkAligned("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	vsize := int64(im.upper.VirtualSize())
	done := 0
	for done < len(p) {
		n := min(len(p)-done, MaxIOSize)
		at := off + int64(done)
		op := sparseOp{off: at, n: int64(n), data: p[done : done+n]}
		op.fills = im.upper.blockFills(at, int64(n), vsize)
		if err := im.applySparse([]sparseOp{op}, false); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// discardSparse is Discard and WriteZeroes for a sparse upper over lowers: in 4 MiB
// pieces, a hole where the merged lowers read zeros (no entry or a zeroed one), real
// zeros where a lower maps data.
func (im *Image) discardSparse(off, length int64) error {
	if err := checkAligned("discard", off, length); err != nil {
		return err
	}
	vsize := int64(im.upper.VirtualSize())
	end := min(off+length, vsize)
	for pos := off; pos < end; {
		pe := min(end, pos+MaxIOSize)
		if err := im.applySparse(im.planDiscard(pos, pe, vsize), true); err != nil {
			return err
		}
		pos = pe
	}
	return nil
}

// planDiscard splits [start, end) into punches (first) and zero writes by what the
// lower index maps there.
func (im *Image) planDiscard(start, end, vsize int64) []sparseOp {
	var punches, zeros []sparseOp
	add := func(a, b int64, data bool) {
		if a >= b {
			return
		}
		list := &punches
		if data {
			list = &zeros
		}
		if k := len(*list); k > 0 && (*list)[k-1].off+(*list)[k-1].n == a {
			(*list)[k-1].n += b - a
			return
		}
		*list = append(*list, sparseOp{off: a, n: b - a, punch: !data})
	}
	pos := start
	for i := im.index.Find(uint64(start) / SectorSize); i < im.index.Len() && pos < end; i++ {
		s := im.index.segs[i]
		sb, se := max(int64(s.Offset)*SectorSize, pos), min(int64(s.End())*SectorSize, end)
		if sb >= end {
			break
		}
		add(pos, sb, false)
		add(sb, se, !s.Zeroed)
		pos = se
	}
	add(pos, end, false)
	for i := range zeros {
		zeros[i].fills = im.upper.blockFills(zeros[i].off, zeros[i].n, vsize)
	}
	return append(punches, zeros...)
}
