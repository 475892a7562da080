package ext4

// The write side: a Writer edits an ext4 file system made by Mkfs, in place, through
// a ReadAt/WriteAt device. Everything it writes is a pure function of the calls made,
// so the same sequence of calls gives the same bytes (no clock, no random, no map
// order). It keeps bitmaps, group descriptors, touched inodes and touched directories
// in memory and writes them back on Close, so a layer on a copy-on-write device
// stores only the blocks that changed.
//
// Supported layout (what Mkfs makes): 4 KiB blocks, 64bit descriptors, extents, no
// journal, no metadata checksums, no inline data, linear directories.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Device is what the writer edits: a disk image, or an LSMT writable layer stack.
// Writes are whole 4 KiB blocks at block-aligned offsets.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

const (
	wBlockSize  = 4096
	wInodeSize  = 256
	wExtraIsize = 32
	wDescSize   = 64
	maxLinks    = 65000
	lpfIno      = 11

	compatExtAttr      = 0x8
	compatDirIndex     = 0x20
	incompatFlexBG     = 0x200
	roCompatLargeFile  = 0x2
	roCompatHugeFile   = 0x8
	roCompatDirNlink   = 0x20
	roCompatExtraIsize = 0x40

	wantCompat   = compatExtAttr | compatDirIndex | compatSparseSuper2
	wantIncompat = incompatFiletype | incompatExtents | incompat64Bit | incompatFlexBG
	wantRoCompat = roCompatSparse | roCompatLargeFile | roCompatHugeFile | roCompatDirNlink | roCompatExtraIsize
)

var le = binary.LittleEndian

// ErrUnsupported is returned for file systems the writer does not edit.
var ErrUnsupported = errors.New("ext4: file system layout not supported by the writer")

// Writer edits a file system. It is not safe for concurrent use.
type Writer struct {
	dev         Device
	sb          []byte // the superblock (1024 bytes)
	blocks      uint64
	groups      uint64
	inodesPerGr uint32
	inodes      uint32
	gdt         []byte // all group descriptors
	blockBitmap [][]byte
	inodeBitmap [][]byte
	dirtyBB     []bool
	dirtyIB     []bool
	freeBlocks  uint64
	freeInodes  uint64
	inodeCache  map[uint32]*rawInode
	dirs        map[uint32]*dir
	blockGoal   uint64 // next block to try
	inodeGoal   uint32 // next inode to try
	firstIno    uint32 // first non-reserved inode
	closed      bool
	dataBuf     []byte // file data staging, reused
}

// rawInode is one inode's 256 bytes with the writer's dirty mark.
type rawInode struct {
	b     [wInodeSize]byte
	dirty bool
}

// OpenWriter opens the file system on dev for editing.
func OpenWriter(dev Device) (*Writer, error) {
	w := &Writer{dev: dev, sb: make([]byte, 1024), inodeCache: map[uint32]*rawInode{}, dirs: map[uint32]*dir{}}
	if err := readFull(dev, w.sb, superOffset); err != nil {
		return nil, fmt.Errorf("ext4: reading superblock: %w", err)
	}
	sb := w.sb
	switch {
	case le.Uint16(sb[0x38:]) != superMagic:
		return nil, fmt.Errorf("ext4: no ext4 superblock at offset 1024")
	case le.Uint32(sb[0x18:]) != 2, le.Uint16(sb[0x58:]) != wInodeSize, le.Uint16(sb[0xfe:]) != wDescSize,
		le.Uint32(sb[0x14:]) != 0, le.Uint32(sb[0x20:]) != 8*wBlockSize:
		return nil, fmt.Errorf("%w: want 4 KiB blocks, 256-byte inodes, 64-byte descriptors", ErrUnsupported)
	case le.Uint32(sb[0x60:])&^uint32(wantIncompat) != 0, le.Uint32(sb[0x64:])&^uint32(wantRoCompat) != 0,
		le.Uint32(sb[0x5c:])&compatHasJournal != 0:
		return nil, fmt.Errorf("%w: features compat %#x incompat %#x ro_compat %#x", ErrUnsupported,
			le.Uint32(sb[0x5c:]), le.Uint32(sb[0x60:]), le.Uint32(sb[0x64:]))
	}
	w.blocks = uint64(le.Uint32(sb[0x4:])) | uint64(le.Uint32(sb[0x150:]))<<32
	w.inodesPerGr = le.Uint32(sb[0x28:])
	w.inodes = le.Uint32(sb[0x0:])
	w.groups = (w.blocks + 8*wBlockSize - 1) / (8 * wBlockSize)
	if w.groups == 0 || w.groups > 1<<20 || w.inodesPerGr == 0 || w.inodesPerGr > 8*wBlockSize ||
		uint64(w.inodes) != w.groups*uint64(w.inodesPerGr) {
		return nil, corrupt("%d blocks, %d inodes, %d inodes per group", w.blocks, w.inodes, w.inodesPerGr)
	}
	w.gdt = make([]byte, w.groups*wDescSize)
	if err := readFull(dev, w.gdt, wBlockSize); err != nil {
		return nil, fmt.Errorf("ext4: reading group descriptors: %w", err)
	}
	w.blockBitmap = make([][]byte, w.groups)
	w.inodeBitmap = make([][]byte, w.groups)
	w.dirtyBB = make([]bool, w.groups)
	w.dirtyIB = make([]bool, w.groups)
	for g := range w.groups {
		bb, ib := w.descBlock(g, 0x0, 0x20), w.descBlock(g, 0x4, 0x24)
		if bb >= w.blocks || ib >= w.blocks {
			return nil, corrupt("group %d: bitmaps at blocks %d, %d outside the file system", g, bb, ib)
		}
		w.blockBitmap[g] = make([]byte, wBlockSize)
		w.inodeBitmap[g] = make([]byte, wBlockSize)
		if err := readFull(dev, w.blockBitmap[g], int64(bb)*wBlockSize); err != nil {
			return nil, fmt.Errorf("ext4: group %d block bitmap: %w", g, err)
		}
		if err := readFull(dev, w.inodeBitmap[g], int64(ib)*wBlockSize); err != nil {
			return nil, fmt.Errorf("ext4: group %d inode bitmap: %w", g, err)
		}
	}
	w.freeBlocks = uint64(le.Uint32(sb[0xc:])) | uint64(le.Uint32(sb[0x158:]))<<32
	w.freeInodes = uint64(le.Uint32(sb[0x10:]))
	w.firstIno = max(le.Uint32(sb[0x54:]), lpfIno)
	if w.firstIno >= w.inodes {
		return nil, corrupt("first inode %d of %d", w.firstIno, w.inodes)
	}
	w.inodeGoal = w.firstIno
	return w, nil
}

func (w *Writer) desc(g uint64) []byte { return w.gdt[g*wDescSize : (g+1)*wDescSize] }

func (w *Writer) descBlock(g uint64, lo, hi int) uint64 {
	d := w.desc(g)
	return uint64(le.Uint32(d[lo:])) | uint64(le.Uint32(d[hi:]))<<32
}

// descCount adds delta to a 32-bit descriptor counter split in lo/hi halves.
func (w *Writer) descCount(g uint64, lo, hi int, delta int) {
	d := w.desc(g)
	v := uint32(le.Uint16(d[lo:])) | uint32(le.Uint16(d[hi:]))<<16
	v = uint32(int64(v) + int64(delta))
	le.PutUint16(d[lo:], uint16(v))
	le.PutUint16(d[hi:], uint16(v>>16))
}

// ---- blocks ----

var errNoSpace = errors.New("ext4: no space left in the file system")

func (w *Writer) blockUsed(b uint64) bool {
	g, i := b/(8*wBlockSize), b%(8*wBlockSize)
	return w.blockBitmap[g][i/8]&(1<<(i%8)) != 0
}

// allocRun allocates up to want contiguous blocks, the first free block at or after
// goal (wrapping around). It returns the first block and the count.
func (w *Writer) allocRun(goal uint64, want uint64) (uint64, uint64, error) {
	if w.freeBlocks == 0 {
		return 0, 0, errNoSpace
	}
	if goal >= w.blocks {
		goal = 0
	}
	start, ok := w.findFree(goal, w.blocks)
	if !ok {
		if start, ok = w.findFree(0, goal); !ok {
			return 0, 0, errNoSpace
		}
	}
	n := uint64(0)
	for n < want && start+n < w.blocks && !w.blockUsed(start+n) {
		w.setBlock(start+n, true)
		n++
	}
	w.blockGoal = start + n
	return start, n, nil
}

// findFree returns the first free block in [from, to).
func (w *Writer) findFree(from, to uint64) (uint64, bool) {
	for b := from; b < to; {
		g, i := b/(8*wBlockSize), b%(8*wBlockSize)
		bm := w.blockBitmap[g]
		if i%8 == 0 && bm[i/8] == 0xff {
			b += 8
			continue
		}
		if bm[i/8]&(1<<(i%8)) == 0 {
			return b, true
		}
		b++
	}
	return 0, false
}

func (w *Writer) setBlock(b uint64, used bool) {
	g, i := b/(8*wBlockSize), b%(8*wBlockSize)
	if used {
		w.blockBitmap[g][i/8] |= 1 << (i % 8)
		w.freeBlocks--
		w.descCount(g, 0xc, 0x2c, -1)
	} else {
		w.blockBitmap[g][i/8] &^= 1 << (i % 8)
		w.freeBlocks++
		w.descCount(g, 0xc, 0x2c, 1)
	}
	w.dirtyBB[g] = true
}

func (w *Writer) freeRun(start, n uint64) error {
	for b := start; b < start+n; b++ {
		if b >= w.blocks || !w.blockUsed(b) {
			return corrupt("freeing block %d that is not in use", b)
		}
		w.setBlock(b, false)
	}
	return nil
}

// ---- inodes ----

func (w *Writer) inode(num uint32) (*rawInode, error) {
	if ri := w.inodeCache[num]; ri != nil {
		return ri, nil
	}
	if num == 0 || num > w.inodes {
		return nil, corrupt("inode %d out of range 1..%d", num, w.inodes)
	}
	ri := &rawInode{}
	if err := readFull(w.dev, ri.b[:], w.inodeOffset(num)); err != nil {
		return nil, fmt.Errorf("ext4: reading inode %d: %w", num, err)
	}
	w.inodeCache[num] = ri
	return ri, nil
}

func (w *Writer) inodeOffset(num uint32) int64 {
	g := uint64(num-1) / uint64(w.inodesPerGr)
	idx := int64(num-1) % int64(w.inodesPerGr)
	return int64(w.descBlock(g, 0x8, 0x28))*wBlockSize + idx*wInodeSize
}

func (w *Writer) inodeUsed(num uint32) bool {
	g, i := uint64(num-1)/uint64(w.inodesPerGr), (num-1)%w.inodesPerGr
	return w.inodeBitmap[g][i/8]&(1<<(i%8)) != 0
}

// allocInode takes the first free inode at or after the goal.
func (w *Writer) allocInode(isDir bool) (uint32, error) {
	if w.freeInodes == 0 {
		return 0, fmt.Errorf("ext4: no free inodes left")
	}
	for pass := 0; pass < 2; pass++ {
		from, to := w.inodeGoal, w.inodes
		if pass == 1 {
			from, to = w.firstIno, w.inodeGoal
		}
		for n := from; n <= to && n >= w.firstIno; n++ {
			g, i := uint64(n-1)/uint64(w.inodesPerGr), (n-1)%w.inodesPerGr
			bm := w.inodeBitmap[g]
			if i%8 == 0 && bm[i/8] == 0xff && n+8 <= to {
				n += 7
				continue
			}
			if bm[i/8]&(1<<(i%8)) != 0 {
				continue
			}
			bm[i/8] |= 1 << (i % 8)
			w.dirtyIB[g] = true
			w.freeInodes--
			w.descCount(g, 0xe, 0x2e, -1)
			if isDir {
				w.descCount(g, 0x10, 0x30, 1)
			}
			w.inodeGoal = n + 1
			ri := &rawInode{dirty: true}
			le.PutUint16(ri.b[0x80:], wExtraIsize)
			w.inodeCache[n] = ri
			return n, nil
		}
	}
	return 0, fmt.Errorf("ext4: no free inodes left (counters say %d)", w.freeInodes)
}

func (w *Writer) freeInode(num uint32, isDir bool) {
	g, i := uint64(num-1)/uint64(w.inodesPerGr), (num-1)%w.inodesPerGr
	w.inodeBitmap[g][i/8] &^= 1 << (i % 8)
	w.dirtyIB[g] = true
	w.freeInodes++
	w.descCount(g, 0xe, 0x2e, 1)
	if isDir {
		w.descCount(g, 0x10, 0x30, -1)
	}
	w.inodeCache[num] = &rawInode{dirty: true} // an unused inode reads as zeros
	delete(w.dirs, num)
}

// ---- flush ----

// Close writes every pending change back to the device. The Writer is unusable after.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	// Directories first: they allocate blocks and change inodes.
	for _, ino := range sortedKeys(w.dirs) {
		if err := w.flushDir(w.dirs[ino]); err != nil {
			return err
		}
	}
	if err := w.writeInodes(); err != nil {
		return err
	}
	for g := range w.groups {
		if w.dirtyBB[g] {
			if _, err := w.dev.WriteAt(w.blockBitmap[g], int64(w.descBlock(g, 0x0, 0x20))*wBlockSize); err != nil {
				return fmt.Errorf("ext4: writing block bitmap %d: %w", g, err)
			}
		}
		if w.dirtyIB[g] {
			if _, err := w.dev.WriteAt(w.inodeBitmap[g], int64(w.descBlock(g, 0x4, 0x24))*wBlockSize); err != nil {
				return fmt.Errorf("ext4: writing inode bitmap %d: %w", g, err)
			}
		}
	}
	// Descriptor blocks whose bytes changed.
	old := make([]byte, wBlockSize)
	for off := 0; off < len(w.gdt); off += wBlockSize {
		blk := make([]byte, wBlockSize)
		copy(blk, w.gdt[off:])
		if err := readFull(w.dev, old, int64(wBlockSize+off)); err != nil {
			return err
		}
		if string(old) != string(blk) {
			if _, err := w.dev.WriteAt(blk, int64(wBlockSize+off)); err != nil {
				return fmt.Errorf("ext4: writing group descriptors: %w", err)
			}
		}
	}
	le.PutUint32(w.sb[0xc:], uint32(w.freeBlocks))
	le.PutUint32(w.sb[0x158:], uint32(w.freeBlocks>>32))
	le.PutUint32(w.sb[0x10:], uint32(w.freeInodes))
	blk0 := make([]byte, wBlockSize)
	if err := readFull(w.dev, blk0, 0); err != nil {
		return err
	}
	if string(blk0[superOffset:superOffset+1024]) != string(w.sb) {
		copy(blk0[superOffset:], w.sb)
		if _, err := w.dev.WriteAt(blk0, 0); err != nil {
			return fmt.Errorf("ext4: writing superblock: %w", err)
		}
	}
	return nil
}

// writeInodes writes the dirty cached inodes, grouped by inode-table block.
func (w *Writer) writeInodes() error {
	byBlock := map[int64][]uint32{}
	for num, ri := range w.inodeCache {
		if ri.dirty {
			off := w.inodeOffset(num)
			blk := off / wBlockSize * wBlockSize
			byBlock[blk] = append(byBlock[blk], num)
		}
	}
	buf := make([]byte, wBlockSize)
	for _, blk := range sortedKeys(byBlock) {
		if err := readFull(w.dev, buf, blk); err != nil {
			return fmt.Errorf("ext4: reading inode table block at %d: %w", blk, err)
		}
		for _, num := range byBlock[blk] {
			copy(buf[w.inodeOffset(num)-blk:], w.inodeCache[num].b[:])
			w.inodeCache[num].dirty = false
		}
		if _, err := w.dev.WriteAt(buf, blk); err != nil {
			return fmt.Errorf("ext4: writing inode table block at %d: %w", blk, err)
		}
	}
	return nil
}

// inodeCacheLimit bounds the cached inodes; beyond it they are written out and
// dropped between operations (never during one: callers hold *rawInode).
var inodeCacheLimit = 1 << 17

func (w *Writer) maybeEvict() error {
	if w.closed {
		return errors.New("ext4: writer is closed")
	}
	if len(w.inodeCache) < inodeCacheLimit {
		return nil
	}
	if err := w.writeInodes(); err != nil {
		return err
	}
	clear(w.inodeCache)
	return nil
}

func sortedKeys[K int64 | uint32, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
