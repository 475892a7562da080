// Package ext4 is a small read-only ext4 (and ext2/ext3) reader: enough to look up
// paths, list directories and map a file to the physical extents that hold its data,
// which is what file-list prefetch needs (the reference FIEMAPs each file).
//
// It is format code only: it reads through an io.ReaderAt and keeps no cache. Every
// on-disk field is bounded, so a hostile image gives an error, never a panic, a hang
// or a huge allocation.
package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

const (
	superOffset = 1024
	superMagic  = 0xEF53
	rootIno     = 2

	incompatFiletype   = 0x2
	incompatMetaBG     = 0x10
	incompatExtents    = 0x40
	incompat64Bit      = 0x80
	incompatInlineData = 0x8000
	compatHasJournal   = 0x4
	compatSparseSuper2 = 0x200
	roCompatSparse     = 0x1

	flagExtents    = 0x80000
	flagInlineData = 0x10000000

	// Limits that keep hostile images cheap.
	maxExtents    = 1 << 20 // extents mapped for one file
	maxTreeDepth  = 5       // ext4's own limit on extent-tree depth
	maxMetaBlocks = 1 << 14 // extent-tree / indirect blocks read for one file
	maxDirSize    = 1 << 28 // bytes of one directory scanned
	maxWalkDepth  = 256     // directory levels under a walked directory
	maxWalkInodes = 1 << 22 // inodes visited by one walk
)

// ErrCorrupt wraps every error about an inconsistent image.
var ErrCorrupt = errors.New("ext4: corrupt file system")

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// FS is an opened ext4 file system.
type FS struct {
	r           io.ReaderAt
	blockSize   int64
	blocks      uint64 // blocks in the file system
	firstData   uint64
	blocksPerGr uint64
	inodesPerGr uint32
	inodes      uint32
	inodeSize   int64
	descSize    int64
	groups      uint64
	incompat    uint32
	firstMetaBG uint64
	sparse      bool // sparse_super: backups only in groups 0, 1 and powers of 3, 5, 7
	sparse2     bool // sparse_super2: backups in backupBGs only
	backupBGs   [2]uint32
	journal     uint32 // inode of the internal journal, 0 if none
}

// Open reads the superblock of the ext4 file system in r (size bytes; < 0 if unknown).
func Open(r io.ReaderAt, size int64) (*FS, error) {
	sb := make([]byte, 1024)
	if err := readFull(r, sb, superOffset); err != nil {
		return nil, fmt.Errorf("ext4: reading superblock: %w", err)
	}
	le := binary.LittleEndian
	if m := le.Uint16(sb[0x38:]); m != superMagic {
		return nil, fmt.Errorf("ext4: no ext4 superblock (magic %#04x at offset 1080, want %#04x)", m, superMagic)
	}
	f := &FS{r: r}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 {
		return nil, corrupt("block size 1024<<%d is above 64 KiB", logBS)
	}
	f.blockSize = 1024 << logBS
	f.inodes = le.Uint32(sb[0x0:])
	f.firstData = uint64(le.Uint32(sb[0x14:]))
	f.blocksPerGr = uint64(le.Uint32(sb[0x20:]))
	f.inodesPerGr = le.Uint32(sb[0x28:])
	f.incompat = le.Uint32(sb[0x60:])
	f.blocks = uint64(le.Uint32(sb[0x4:]))
	if f.incompat&incompat64Bit != 0 {
		f.blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	f.inodeSize = 128
	if le.Uint32(sb[0x4c:]) >= 1 { // dynamic revision
		f.inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	f.descSize = 32
	if f.incompat&incompat64Bit != 0 {
		f.descSize = int64(le.Uint16(sb[0xfe:]))
		if f.descSize < 64 || f.descSize > 1024 || f.descSize&(f.descSize-1) != 0 {
			return nil, corrupt("64-bit group descriptor size %d", f.descSize)
		}
	}
	f.firstMetaBG = uint64(le.Uint32(sb[0x104:]))
	f.sparse = le.Uint32(sb[0x64:])&roCompatSparse != 0
	f.sparse2 = le.Uint32(sb[0x5c:])&compatSparseSuper2 != 0
	f.backupBGs = [2]uint32{le.Uint32(sb[0x24c:]), le.Uint32(sb[0x250:])}
	if le.Uint32(sb[0x5c:])&compatHasJournal != 0 && le.Uint32(sb[0xe4:]) == 0 { // no external journal device
		f.journal = le.Uint32(sb[0xe0:])
	}

	switch {
	case f.inodeSize < 128 || f.inodeSize > f.blockSize || f.inodeSize&(f.inodeSize-1) != 0:
		return nil, corrupt("inode size %d", f.inodeSize)
	case f.blocksPerGr == 0 || f.blocksPerGr > 8*uint64(f.blockSize):
		return nil, corrupt("%d blocks per group", f.blocksPerGr)
	case f.inodesPerGr == 0 || uint64(f.inodesPerGr) > 8*uint64(f.blockSize):
		return nil, corrupt("%d inodes per group", f.inodesPerGr)
	case f.blocks <= f.firstData || f.blocks > 1<<48:
		return nil, corrupt("%d blocks, first data block %d", f.blocks, f.firstData)
	case f.firstData > 1:
		return nil, corrupt("first data block %d", f.firstData)
	}
	if size >= 0 && uint64(size)/uint64(f.blockSize) < f.blocks {
		return nil, fmt.Errorf("ext4: file system of %d blocks of %d bytes does not fit in %d bytes", f.blocks, f.blockSize, size)
	}
	f.groups = (f.blocks - f.firstData + f.blocksPerGr - 1) / f.blocksPerGr
	if uint64(f.inodes) > f.groups*uint64(f.inodesPerGr) {
		return nil, corrupt("%d inodes in %d groups of %d", f.inodes, f.groups, f.inodesPerGr)
	}
	return f, nil
}

// JournalInode is the inode number of the internal journal, 0 if there is none.
// Mounting reads the journal's superblock, its first block.
func (f *FS) JournalInode() uint32 { return f.journal }

// BlockSize is the file system's block size in bytes.
func (f *FS) BlockSize() int64 { return f.blockSize }

// Inode is an inode read from the inode table.
type Inode struct {
	Num   uint32
	Mode  uint16
	Size  int64
	Flags uint32
	block [60]byte // i_block: extent tree root, block map or inline data
}

// Mode type bits (i_mode & 0xF000).
const (
	modeType    = 0xF000
	modeDir     = 0x4000
	modeRegular = 0x8000
	modeSymlink = 0xA000
)

func (in *Inode) IsDir() bool     { return in.Mode&modeType == modeDir }
func (in *Inode) IsRegular() bool { return in.Mode&modeType == modeRegular }
func (in *Inode) IsSymlink() bool { return in.Mode&modeType == modeSymlink }

// Inline reports whether the inode's data is stored in the inode itself (no extents).
func (in *Inode) Inline() bool { return in.Flags&flagInlineData != 0 }

// Inode reads inode num.
func (f *FS) Inode(num uint32) (*Inode, error) {
	if num == 0 || num > f.inodes {
		return nil, corrupt("inode %d out of range 1..%d", num, f.inodes)
	}
	g := uint64(num-1) / uint64(f.inodesPerGr)
	idx := int64(num-1) % int64(f.inodesPerGr)
	table, err := f.inodeTable(g)
	if err != nil {
		return nil, err
	}
	// The table must lie inside the file system.
	tableBlocks := (uint64(f.inodesPerGr)*uint64(f.inodeSize) + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	if table < f.firstData || table >= f.blocks || f.blocks-table < tableBlocks {
		return nil, corrupt("group %d: inode table at block %d outside the file system", g, table)
	}
	b := make([]byte, 160)
	n := min(int64(len(b)), f.inodeSize)
	if err := readFull(f.r, b[:n], int64(table)*f.blockSize+idx*f.inodeSize); err != nil {
		return nil, fmt.Errorf("ext4: reading inode %d: %w", num, err)
	}
	le := binary.LittleEndian
	in := &Inode{Num: num, Mode: le.Uint16(b[0:]), Flags: le.Uint32(b[0x20:])}
	size := uint64(le.Uint32(b[0x4:])) | uint64(le.Uint32(b[0x6c:]))<<32
	if size > 1<<62 {
		return nil, corrupt("inode %d: size %d", num, size)
	}
	in.Size = int64(size)
	copy(in.block[:], b[0x28:0x28+60])
	return in, nil
}

// inodeTable returns the first block of group g's inode table.
func (f *FS) inodeTable(g uint64) (uint64, error) {
	if g >= f.groups {
		return 0, corrupt("group %d out of range (%d groups)", g, f.groups)
	}
	perBlock := uint64(f.blockSize / f.descSize)
	var blk uint64
	if f.incompat&incompatMetaBG == 0 || g/perBlock < f.firstMetaBG {
		blk = f.firstData + 1 + g/perBlock
	} else {
		// meta_bg: each meta group's descriptors sit in its first group, after the
		// superblock backup if that group has one.
		first := g / perBlock * perBlock
		blk = f.firstData + first*f.blocksPerGr
		if f.hasSuper(first) {
			blk++
		}
	}
	if blk >= f.blocks {
		return 0, corrupt("group %d: descriptor block %d outside the file system", g, blk)
	}
	d := make([]byte, f.descSize)
	if err := readFull(f.r, d, int64(blk)*f.blockSize+int64(g%perBlock)*f.descSize); err != nil {
		return 0, fmt.Errorf("ext4: reading group descriptor %d: %w", g, err)
	}
	t := uint64(binary.LittleEndian.Uint32(d[0x8:]))
	if f.descSize >= 64 {
		t |= uint64(binary.LittleEndian.Uint32(d[0x28:])) << 32
	}
	return t, nil
}

func (f *FS) hasSuper(g uint64) bool {
	switch {
	case g == 0:
		return true
	case f.sparse2:
		return g == uint64(f.backupBGs[0]) || g == uint64(f.backupBGs[1])
	case g == 1 || !f.sparse:
		return true
	case g&1 == 0:
		return false
	}
	return isPower(g, 3) || isPower(g, 5) || isPower(g, 7)
}

func isPower(g, b uint64) bool {
	for g%b == 0 {
		g /= b
	}
	return g == 1
}

// Extent is a run of a file's data: Length bytes of the file at Logical are stored
// at Physical, a byte offset of the file system's device.
type Extent struct {
	Logical, Physical, Length int64
}

// Extents maps the data of in to physical extents in logical order. Holes and
// uninitialized (preallocated, reading as zeros) extents are left out; inline data
// has no extents. The last extent may run past in.Size to its block's end.
func (f *FS) Extents(in *Inode) ([]Extent, error) {
	if in.Inline() || in.Size == 0 || in.IsSymlink() && in.Size < 60 && in.Flags&flagExtents == 0 {
		return nil, nil // data (or a fast symlink's target) lives in the inode
	}
	m := &mapper{f: f, in: in, limitBlocks: (uint64(in.Size) + uint64(f.blockSize) - 1) / uint64(f.blockSize)}
	var err error
	if in.Flags&flagExtents != 0 {
		err = m.extentNode(in.block[:], -1)
	} else {
		err = m.blockMap()
	}
	if err != nil {
		return nil, fmt.Errorf("inode %d: %w", in.Num, err)
	}
	return m.out, nil
}

type mapper struct {
	f           *FS
	in          *Inode
	limitBlocks uint64 // blocks covering in.Size: nothing beyond is mapped
	out         []Extent
	meta        int // metadata blocks read
	nextLogical uint64
}

// add appends blocks [lblk, lblk+n) at physical block pblk, merging with the previous
// extent when contiguous.
func (m *mapper) add(lblk, pblk, n uint64) error {
	if lblk >= m.limitBlocks || n == 0 {
		return nil
	}
	n = min(n, m.limitBlocks-lblk)
	if lblk < m.nextLogical {
		return corrupt("extent at logical block %d overlaps the previous one (ends at %d)", lblk, m.nextLogical)
	}
	if pblk < m.f.firstData || pblk >= m.f.blocks || m.f.blocks-pblk < n {
		return corrupt("%d blocks at physical block %d outside the file system (%d blocks)", n, pblk, m.f.blocks)
	}
	m.nextLogical = lblk + n
	bs := m.f.blockSize
	if k := len(m.out); k > 0 {
		p := &m.out[k-1]
		if p.Logical+p.Length == int64(lblk)*bs && p.Physical+p.Length == int64(pblk)*bs {
			p.Length += int64(n) * bs
			return nil
		}
	}
	if len(m.out) >= maxExtents {
		return corrupt("more than %d extents", maxExtents)
	}
	m.out = append(m.out, Extent{Logical: int64(lblk) * bs, Physical: int64(pblk) * bs, Length: int64(n) * bs})
	return nil
}

func (m *mapper) readMeta(blk uint64) ([]byte, error) {
	if blk < m.f.firstData || blk >= m.f.blocks {
		return nil, corrupt("metadata block %d outside the file system", blk)
	}
	if m.meta++; m.meta > maxMetaBlocks {
		return nil, corrupt("more than %d extent-tree or indirect blocks", maxMetaBlocks)
	}
	b := make([]byte, m.f.blockSize)
	if err := readFull(m.f.r, b, int64(blk)*m.f.blockSize); err != nil {
		return nil, fmt.Errorf("ext4: reading block %d: %w", blk, err)
	}
	return b, nil
}

// extentNode walks one extent-tree node. wantDepth is the depth its parent implies
// (-1 at the root); a node must have exactly that depth, which also rules out loops.
func (m *mapper) extentNode(b []byte, wantDepth int) error {
	le := binary.LittleEndian
	if len(b) < 12 || le.Uint16(b) != 0xF30A {
		return corrupt("extent node without magic")
	}
	entries, max, depth := int(le.Uint16(b[2:])), int(le.Uint16(b[4:])), int(le.Uint16(b[6:]))
	switch {
	case depth > maxTreeDepth:
		return corrupt("extent tree depth %d", depth)
	case wantDepth >= 0 && depth != wantDepth:
		return corrupt("extent node of depth %d where %d is expected", depth, wantDepth)
	case entries > max || 12+12*max > len(b):
		return corrupt("extent node with %d of %d entries in %d bytes", entries, max, len(b))
	}
	for i := 0; i < entries; i++ {
		e := b[12+12*i:]
		lblk := uint64(le.Uint32(e))
		if depth == 0 {
			n := uint64(le.Uint16(e[4:]))
			pblk := uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))
			if n > 32768 { // uninitialized: reads as zeros, nothing to fetch
				if lblk+n-32768 > m.nextLogical {
					m.nextLogical = lblk + n - 32768
				}
				continue
			}
			if err := m.add(lblk, pblk, n); err != nil {
				return err
			}
			continue
		}
		if lblk >= m.limitBlocks {
			break // entries are sorted: the rest is past the file's end
		}
		child := uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:]))
		cb, err := m.readMeta(child)
		if err != nil {
			return err
		}
		if err := m.extentNode(cb, depth-1); err != nil {
			return err
		}
	}
	return nil
}

// blockMap walks the legacy (ext2/ext3) direct and indirect block pointers.
func (m *mapper) blockMap() error {
	le := binary.LittleEndian
	per := uint64(m.f.blockSize / 4)
	for i := uint64(0); i < 12; i++ {
		if p := uint64(le.Uint32(m.in.block[4*i:])); p != 0 {
			if err := m.add(i, p, 1); err != nil {
				return err
			}
		}
	}
	base := uint64(12)
	span := per
	for level := 1; level <= 3; level++ {
		if base >= m.limitBlocks {
			return nil
		}
		if p := uint64(le.Uint32(m.in.block[4*(11+level):])); p != 0 {
			if err := m.indirect(p, level, base); err != nil {
				return err
			}
		}
		base += span
		span *= per
	}
	return nil
}

// indirect maps the blocks under an indirect block of the given level (1: it points
// at data blocks) whose first logical block is base.
func (m *mapper) indirect(blk uint64, level int, base uint64) error {
	b, err := m.readMeta(blk)
	if err != nil {
		return err
	}
	per := uint64(len(b) / 4)
	span := uint64(1)
	for i := 1; i < level; i++ {
		span *= per
	}
	for i := uint64(0); i < per; i++ {
		l := base + i*span
		if l >= m.limitBlocks {
			return nil
		}
		p := uint64(binary.LittleEndian.Uint32(b[4*i:]))
		if p == 0 {
			continue
		}
		if level == 1 {
			err = m.add(l, p, 1)
		} else {
			err = m.indirect(p, level-1, l)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// DirEntry is one name in a directory.
type DirEntry struct {
	Name  string
	Inode uint32
}

// ReadDir lists the directory in (without "." and ".."). A linear scan of the
// directory blocks, which also reads hashed (htree) directories.
func (f *FS) ReadDir(in *Inode) ([]DirEntry, error) {
	var out []DirEntry
	err := f.scanDir(in, func(name []byte, ino uint32) bool {
		if s := string(name); s != "." && s != ".." {
			out = append(out, DirEntry{Name: s, Inode: ino})
		}
		return true
	})
	return out, err
}

// scanDir calls fn for each live entry of directory in until fn returns false.
func (f *FS) scanDir(in *Inode, fn func(name []byte, ino uint32) bool) error {
	if !in.IsDir() {
		return fmt.Errorf("ext4: inode %d is not a directory", in.Num)
	}
	if in.Inline() {
		// i_block: the parent's inode number, then entries. (Entries spilling into
		// the system.data attribute are not read.)
		if _, err := f.parseDirBlock(in.block[4:], fn); err != nil {
			return fmt.Errorf("inode %d: inline directory: %w", in.Num, err)
		}
		return nil
	}
	if in.Size > maxDirSize {
		return corrupt("directory inode %d of %d bytes (at most %d are read)", in.Num, in.Size, maxDirSize)
	}
	exts, err := f.Extents(in)
	if err != nil {
		return err
	}
	b := make([]byte, f.blockSize)
	for _, e := range exts {
		for off := int64(0); off < e.Length && e.Logical+off < in.Size; off += f.blockSize {
			if err := readFull(f.r, b, e.Physical+off); err != nil {
				return fmt.Errorf("ext4: reading directory %d: %w", in.Num, err)
			}
			more, err := f.parseDirBlock(b, fn)
			if err != nil {
				return fmt.Errorf("inode %d: directory block at %d: %w", in.Num, e.Physical+off, err)
			}
			if !more {
				return nil
			}
		}
	}
	return nil
}

func (f *FS) parseDirBlock(b []byte, fn func(name []byte, ino uint32) bool) (bool, error) {
	le := binary.LittleEndian
	for off := 0; off+8 <= len(b); {
		ino := le.Uint32(b[off:])
		rl := int(le.Uint16(b[off+4:]))
		if rl == 65535 || rl == 0 && f.blockSize == 65536 {
			rl = 65536 // how 64 KiB blocks encode a record spanning the block
		}
		nl := int(b[off+6])
		if f.incompat&incompatFiletype == 0 {
			nl = int(le.Uint16(b[off+6:]))
		}
		if rl < 8 || rl%4 != 0 || rl > len(b)-off || 8+nl > rl {
			return false, corrupt("directory entry at %d: record length %d, name length %d", off, rl, nl)
		}
		if ino != 0 && nl > 0 {
			if !fn(b[off+8:off+8+nl], ino) {
				return false, nil
			}
		}
		off += rl
	}
	return true, nil
}

// Lookup resolves an absolute path from the root directory. Symlinks are not
// followed; a missing name gives an error matching fs.ErrNotExist.
func (f *FS) Lookup(path string) (*Inode, error) {
	in, err := f.Inode(rootIno)
	if err != nil {
		return nil, err
	}
	for _, comp := range strings.Split(path, "/") {
		if comp == "" || comp == "." {
			continue
		}
		if !in.IsDir() {
			if in.IsSymlink() {
				return nil, fmt.Errorf("ext4: %s: a symlink on the path is not followed", path)
			}
			return nil, fmt.Errorf("ext4: %s: %w (not a directory on the path)", path, fs.ErrNotExist)
		}
		var found uint32
		err := f.scanDir(in, func(name []byte, ino uint32) bool {
			if string(name) == comp {
				found = ino
				return false
			}
			return true
		})
		if err != nil {
			return nil, err
		}
		if found == 0 {
			return nil, fmt.Errorf("ext4: %s: %w", path, fs.ErrNotExist)
		}
		if in, err = f.Inode(found); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// Walk calls fn for every inode under the directory dir (not dir itself), depth
// first, with its path relative to dir joined to prefix. Directories are entered once
// even if linked twice, so a looping image ends; depth and inode count are bounded.
// An error from fn stops the walk.
func (f *FS) Walk(dir *Inode, prefix string, fn func(path string, in *Inode) error) error {
	w := &walker{f: f, fn: fn, seen: map[uint32]bool{dir.Num: true}}
	return w.walk(dir, prefix, 0)
}

type walker struct {
	f     *FS
	fn    func(string, *Inode) error
	seen  map[uint32]bool
	count int
}

func (w *walker) walk(dir *Inode, prefix string, depth int) error {
	if depth >= maxWalkDepth {
		return corrupt("%s: more than %d directory levels", prefix, maxWalkDepth)
	}
	ents, err := w.f.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if w.count++; w.count > maxWalkInodes {
			return corrupt("more than %d inodes under one directory", maxWalkInodes)
		}
		in, err := w.f.Inode(e.Inode)
		if err != nil {
			return err
		}
		p := strings.TrimSuffix(prefix, "/") + "/" + e.Name
		if err := w.fn(p, in); err != nil {
			return err
		}
		if in.IsDir() && !w.seen[in.Num] {
			w.seen[in.Num] = true
			if err := w.walk(in, p, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%d bytes at offset %d: %w", len(b), off, err)
}
