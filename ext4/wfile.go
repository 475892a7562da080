package ext4

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
)

// Attr is what a new inode gets.
type Attr struct {
	Mode         uint16 // type and permission bits as in st_mode
	UID, GID     uint32
	Mtime        int64 // seconds since the epoch; also atime, ctime and crtime
	MtimeNsec    uint32
	Major, Minor uint32            // character and block devices
	Xattrs       map[string][]byte // full names ("user.a", "security.capability")
}

// File type bits of Attr.Mode.
const (
	ModeFIFO    = 0x1000
	ModeChar    = 0x2000
	ModeDir     = 0x4000
	ModeBlock   = 0x6000
	ModeRegular = 0x8000
	ModeSymlink = 0xA000
	ModeSocket  = 0xC000
)

func (ri *rawInode) mode() uint16  { return le.Uint16(ri.b[0:]) }
func (ri *rawInode) isDir() bool   { return ri.mode()&modeType == modeDir }
func (ri *rawInode) links() uint16 { return le.Uint16(ri.b[0x1a:]) }
func (ri *rawInode) flags() uint32 { return le.Uint32(ri.b[0x20:]) }
func (ri *rawInode) size() uint64 {
	return uint64(le.Uint32(ri.b[4:])) | uint64(le.Uint32(ri.b[0x6c:]))<<32
}
func (ri *rawInode) xattrBlock() uint64 {
	return uint64(le.Uint32(ri.b[0x68:])) | uint64(le.Uint16(ri.b[0x76:]))<<32
}

func (ri *rawInode) setLinks(n uint16) { le.PutUint16(ri.b[0x1a:], n); ri.dirty = true }
func (ri *rawInode) setSize(n uint64) {
	le.PutUint32(ri.b[4:], uint32(n))
	le.PutUint32(ri.b[0x6c:], uint32(n>>32))
	ri.dirty = true
}
func (ri *rawInode) setBlocks512(n uint64) {
	le.PutUint32(ri.b[0x1c:], uint32(n))
	le.PutUint16(ri.b[0x74:], uint16(n>>32))
	ri.dirty = true
}
func (ri *rawInode) blocks512() uint64 {
	return uint64(le.Uint32(ri.b[0x1c:])) | uint64(le.Uint16(ri.b[0x74:]))<<32
}
func (ri *rawInode) setXattrBlock(b uint64) {
	le.PutUint32(ri.b[0x68:], uint32(b))
	le.PutUint16(ri.b[0x76:], uint16(b>>32))
	ri.dirty = true
}

// encodeTime splits seconds into the 32-bit field and the extra field's epoch bits.
func encodeTime(sec int64, nsec uint32) (uint32, uint32) {
	lo := uint32(sec)
	epoch := uint32((sec-int64(int32(lo)))>>32) & 3
	return lo, nsec<<2 | epoch
}

func (ri *rawInode) setTimes(sec int64, nsec uint32) {
	lo, extra := encodeTime(sec, nsec)
	for _, off := range []int{0x8, 0xc, 0x10, 0x90} { // atime ctime mtime crtime
		le.PutUint32(ri.b[off:], lo)
	}
	for _, off := range []int{0x84, 0x88, 0x8c, 0x94} {
		le.PutUint32(ri.b[off:], extra)
	}
	ri.dirty = true
}

func (ri *rawInode) setOwner(a Attr) {
	le.PutUint16(ri.b[0:], a.Mode)
	le.PutUint16(ri.b[2:], uint16(a.UID))
	le.PutUint16(ri.b[0x78:], uint16(a.UID>>16))
	le.PutUint16(ri.b[0x18:], uint16(a.GID))
	le.PutUint16(ri.b[0x7a:], uint16(a.GID>>16))
	ri.dirty = true
}

// ---- extents ----

// extent is a run of blocks: logical block, physical block, count (<= 32768).
type extent struct {
	lblk uint32
	pblk uint64
	n    uint32
}

const maxExtentLen = 32768

// fileExtents reads an inode's leaf extents and the tree blocks holding them.
func (w *Writer) fileExtents(ri *rawInode) (exts []extent, tree []uint64, err error) {
	if ri.flags()&flagExtents == 0 {
		return nil, nil, nil
	}
	var walk func(b []byte, depth int) error
	walk = func(b []byte, depth int) error {
		if le.Uint16(b) != 0xF30A {
			return corrupt("extent node without magic")
		}
		n, d := int(le.Uint16(b[2:])), int(le.Uint16(b[6:]))
		if d > maxTreeDepth || depth >= 0 && d != depth || 12+12*n > len(b) {
			return corrupt("extent node of depth %d with %d entries", d, n)
		}
		for i := 0; i < n; i++ {
			e := b[12+12*i:]
			if d == 0 {
				l := uint32(le.Uint16(e[4:]))
				if l > maxExtentLen {
					l -= maxExtentLen
				}
				exts = append(exts, extent{lblk: le.Uint32(e), n: l, pblk: uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))})
				continue
			}
			child := uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:]))
			if child >= w.blocks || len(tree) > maxMetaBlocks {
				return corrupt("extent index block %d", child)
			}
			tree = append(tree, child)
			cb := make([]byte, wBlockSize)
			if err := readFull(w.dev, cb, int64(child)*wBlockSize); err != nil {
				return err
			}
			if err := walk(cb, d-1); err != nil {
				return err
			}
		}
		return nil
	}
	err = walk(ri.b[0x28:0x28+60], -1)
	return exts, tree, err
}

// setExtents writes an extent tree for exts (sorted, non-overlapping) into ri,
// allocating tree blocks near goal. Old tree blocks must have been freed by the caller.
func (w *Writer) setExtents(ri *rawInode, exts []extent, goal uint64) (treeBlocks uint64, err error) {
	root := ri.b[0x28 : 0x28+60]
	clear(root)
	putHeader := func(b []byte, n, max, depth int) {
		le.PutUint16(b, 0xF30A)
		le.PutUint16(b[2:], uint16(n))
		le.PutUint16(b[4:], uint16(max))
		le.PutUint16(b[6:], uint16(depth))
	}
	le.PutUint32(ri.b[0x20:], ri.flags()|flagExtents)
	ri.dirty = true
	if len(exts) <= 4 {
		putHeader(root, len(exts), 4, 0)
		for i, e := range exts {
			putLeaf(root[12+12*i:], e)
		}
		return 0, nil
	}
	const perBlock = (wBlockSize - 12) / 12
	// Level 0: leaf blocks.
	type node struct {
		first uint32
		blk   uint64
	}
	// writeNode puts one tree block near goal and counts it.
	writeNode := func(b []byte) (uint64, error) {
		blk, _, err := w.allocRun(goal, 1)
		if err != nil {
			return 0, err
		}
		treeBlocks++
		_, err = w.dev.WriteAt(b, int64(blk)*wBlockSize)
		return blk, err
	}
	var level []node
	for i := 0; i < len(exts); i += perBlock {
		chunk := exts[i:min(i+perBlock, len(exts))]
		b := make([]byte, wBlockSize)
		putHeader(b, len(chunk), perBlock, 0)
		for j, e := range chunk {
			putLeaf(b[12+12*j:], e)
		}
		blk, err := writeNode(b)
		if err != nil {
			return treeBlocks, err
		}
		level = append(level, node{chunk[0].lblk, blk})
	}
	depth := 1
	for len(level) > 4 {
		var next []node
		for i := 0; i < len(level); i += perBlock {
			chunk := level[i:min(i+perBlock, len(level))]
			b := make([]byte, wBlockSize)
			putHeader(b, len(chunk), perBlock, depth)
			for j, c := range chunk {
				putIndex(b[12+12*j:], c.first, c.blk)
			}
			blk, err := writeNode(b)
			if err != nil {
				return treeBlocks, err
			}
			next = append(next, node{chunk[0].first, blk})
		}
		level = next
		depth++
	}
	putHeader(root, len(level), 4, depth)
	for i, c := range level {
		putIndex(root[12+12*i:], c.first, c.blk)
	}
	return treeBlocks, nil
}

func putLeaf(b []byte, e extent) {
	le.PutUint32(b, e.lblk)
	le.PutUint16(b[4:], uint16(e.n))
	le.PutUint16(b[6:], uint16(e.pblk>>32))
	le.PutUint32(b[8:], uint32(e.pblk))
}

func putIndex(b []byte, first uint32, blk uint64) {
	le.PutUint32(b, first)
	le.PutUint32(b[4:], uint32(blk))
	le.PutUint16(b[8:], uint16(blk>>32))
	le.PutUint16(b[10:], 0)
}

// appendExtent adds n blocks at logical l, physical p, merging with the last extent.
func appendExtent(exts []extent, l uint32, p uint64, n uint32) []extent {
	for n > 0 {
		if k := len(exts); k > 0 {
			e := &exts[k-1]
			if e.lblk+e.n == l && e.pblk+uint64(e.n) == p && e.n < maxExtentLen {
				add := min(n, maxExtentLen-e.n)
				e.n += add
				l, p, n = l+add, p+uint64(add), n-add
				continue
			}
		}
		add := min(n, maxExtentLen)
		exts = append(exts, extent{l, p, add})
		l, p, n = l+add, p+uint64(add), n-add
	}
	return exts
}

// writeData stores size bytes from r as the data of ri. All-zero blocks become holes.
func (w *Writer) writeData(ri *rawInode, r io.Reader, size int64) error {
	if size < 0 || uint64(size) > uint64(w.freeBlocks)*wBlockSize || size > 1<<44 {
		return fmt.Errorf("ext4: a %d-byte file does not fit (%d blocks free)", size, w.freeBlocks)
	}
	const chunk = 1 << 20
	if size > 0 && w.dataBuf == nil {
		w.dataBuf = make([]byte, chunk)
	}
	buf := w.dataBuf
	var exts []extent
	var lblk uint32
	var used uint64
	for done := int64(0); done < size; {
		n := int(min(int64(chunk), size-done))
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return fmt.Errorf("ext4: reading file data at %d of %d: %w", done, size, err)
		}
		nb := (n + wBlockSize - 1) / wBlockSize
		clear(buf[n : nb*wBlockSize])
		for i := 0; i < nb; {
			if isZero(buf[i*wBlockSize : (i+1)*wBlockSize]) {
				i++
				continue
			}
			j := i + 1
			for j < nb && !isZero(buf[j*wBlockSize:(j+1)*wBlockSize]) {
				j++
			}
			// Blocks [i, j) hold data: allocate and write them in runs.
			for i < j {
				start, got, err := w.allocRun(w.blockGoal, uint64(j-i))
				if err != nil {
					return err
				}
				if _, err := w.dev.WriteAt(buf[i*wBlockSize:(i+int(got))*wBlockSize], int64(start)*wBlockSize); err != nil {
					return fmt.Errorf("ext4: writing file data: %w", err)
				}
				exts = appendExtent(exts, lblk+uint32(i), start, uint32(got))
				used += got
				i += int(got)
			}
		}
		lblk += uint32(nb)
		done += int64(n)
	}
	tree, err := w.setExtents(ri, exts, w.blockGoal)
	if err != nil {
		return err
	}
	ri.setSize(uint64(size))
	ri.setBlocks512(ri.blocks512() + (used+tree)*(wBlockSize/512))
	return nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if le.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// freeData releases the data and tree blocks of ri.
func (w *Writer) freeData(ri *rawInode) error {
	exts, tree, err := w.fileExtents(ri)
	if err != nil {
		return err
	}
	for _, e := range exts {
		if err := w.freeRun(e.pblk, uint64(e.n)); err != nil {
			return err
		}
	}
	for _, b := range tree {
		if err := w.freeRun(b, 1); err != nil {
			return err
		}
	}
	return nil
}

// ---- xattrs ----

var xattrPrefixes = []struct {
	index  uint8
	prefix string
}{
	{2, "system.posix_acl_access"}, {3, "system.posix_acl_default"},
	{1, "user."}, {4, "trusted."}, {6, "security."}, {7, "system."},
}

type xattr struct {
	index uint8
	name  string // without the prefix
	value []byte
}

func splitXattr(full string) (xattr, error) {
	for _, p := range xattrPrefixes {
		if strings.HasPrefix(full, p.prefix) {
			x := xattr{index: p.index, name: full[len(p.prefix):]}
			if p.index == 2 || p.index == 3 {
				if x.name != "" {
					continue
				}
			}
			if len(x.name) > 255 {
				return x, fmt.Errorf("ext4: xattr name %q longer than 255 bytes", full)
			}
			return x, nil
		}
	}
	return xattr{}, fmt.Errorf("ext4: xattr %q: unsupported namespace", full)
}

func xattrEntryHash(x xattr) uint32 {
	var h uint32
	for _, c := range []byte(x.name) {
		h = h<<5 ^ h>>27 ^ uint32(int32(int8(c)))
	}
	v := x.value
	for i := 0; i < len(v); i += 4 {
		var word [4]byte
		copy(word[:], v[i:])
		h = h<<16 ^ h>>16 ^ le.Uint32(word[:])
	}
	return h
}

func pad4(n int) int { return (n + 3) &^ 3 }

// encodeXattrs lays out entries and values in region (the in-inode area after the
// magic, or a whole block after its 32-byte header). Offsets are relative to base.
// It reports whether they fit.
func encodeXattrs(region []byte, entStart, base int, xs []xattr, withHash bool) bool {
	clear(region[entStart:])
	off, end := entStart, len(region)
	for _, x := range xs {
		esz := pad4(16 + len(x.name))
		vsz := pad4(len(x.value))
		if off+esz+4 > end-vsz {
			return false
		}
		end -= vsz
		e := region[off:]
		e[0] = byte(len(x.name))
		e[1] = x.index
		le.PutUint16(e[2:], uint16(end-base))
		le.PutUint32(e[4:], 0)
		le.PutUint32(e[8:], uint32(len(x.value)))
		if withHash {
			le.PutUint32(e[12:], xattrEntryHash(x))
		}
		copy(e[16:], x.name)
		copy(region[end:], x.value)
		if len(x.value) == 0 {
			le.PutUint16(e[2:], 0)
		}
		off += esz
	}
	return true
}

// setXattrs stores xs (sorted) in the inode if they fit, else in one block.
func (w *Writer) setXattrs(ri *rawInode, full map[string][]byte) error {
	if old := ri.xattrBlock(); old != 0 {
		if err := w.freeRun(old, 1); err != nil {
			return err
		}
		ri.setXattrBlock(0)
		ri.setBlocks512(ri.blocks512() - wBlockSize/512)
	}
	inl := ri.b[128+wExtraIsize:]
	clear(inl)
	ri.dirty = true
	if len(full) == 0 {
		return nil
	}
	xs := make([]xattr, 0, len(full))
	for name, v := range full {
		x, err := splitXattr(name)
		if err != nil {
			return err
		}
		x.value = v
		if x.index == 2 || x.index == 3 {
			if x.value, err = aclToDisk(v); err != nil {
				return err
			}
		}
		xs = append(xs, x)
	}
	sort.Slice(xs, func(i, j int) bool {
		a, b := xs[i], xs[j]
		if a.index != b.index {
			return a.index < b.index
		}
		if len(a.name) != len(b.name) {
			return len(a.name) < len(b.name)
		}
		return a.name < b.name
	})
	if encodeXattrs(inl, 4, 4, xs, false) {
		le.PutUint32(inl, 0xEA020000)
		return nil
	}
	clear(inl)
	blk := make([]byte, wBlockSize)
	if !encodeXattrs(blk, 32, 0, xs, true) {
		return fmt.Errorf("ext4: extended attributes do not fit in one block")
	}
	le.PutUint32(blk, 0xEA020000)
	le.PutUint32(blk[4:], 1) // refcount
	le.PutUint32(blk[8:], 1) // blocks
	var h uint32
	for _, x := range xs {
		h = h<<16 ^ h>>16 ^ xattrEntryHash(x)
	}
	le.PutUint32(blk[0x10:], h)
	b, _, err := w.allocRun(w.blockGoal, 1)
	if err != nil {
		return err
	}
	if _, err := w.dev.WriteAt(blk, int64(b)*wBlockSize); err != nil {
		return err
	}
	ri.setXattrBlock(b)
	ri.setBlocks512(ri.blocks512() + wBlockSize/512)
	return nil
}

// ---- nodes ----

// newInode allocates and fills an inode (links 1; directories are set by mkdir).
func (w *Writer) newInode(a Attr) (uint32, *rawInode, error) {
	num, err := w.allocInode(a.Mode&modeType == modeDir)
	if err != nil {
		return 0, nil, err
	}
	ri := w.inodeCache[num]
	ri.setOwner(a)
	ri.setTimes(a.Mtime, a.MtimeNsec)
	ri.setLinks(1)
	if err := w.setXattrs(ri, a.Xattrs); err != nil {
		return num, ri, err
	}
	return num, ri, nil
}

func fileType(mode uint16) uint8 {
	switch mode & modeType {
	case ModeRegular:
		return 1
	case ModeDir:
		return 2
	case ModeChar:
		return 3
	case ModeBlock:
		return 4
	case ModeFIFO:
		return 5
	case ModeSocket:
		return 6
	case ModeSymlink:
		return 7
	}
	return 0
}

// Create makes a regular file, device, FIFO or socket named name in directory
// parent, with size bytes of data from r (regular files only).
func (w *Writer) Create(parent uint32, name string, a Attr, r io.Reader, size int64) (uint32, error) {
	if err := w.maybeEvict(); err != nil {
		return 0, err
	}
	t := a.Mode & modeType
	if t == 0 || t == ModeDir || t == ModeSymlink {
		return 0, fmt.Errorf("ext4: create %q: mode %#o is not a file, device, FIFO or socket", name, a.Mode)
	}
	d, err := w.dirForInsert(parent, name)
	if err != nil {
		return 0, err
	}
	num, ri, err := w.newInode(a)
	if err != nil {
		return 0, err
	}
	switch t {
	case ModeRegular:
		if err := w.writeData(ri, r, size); err != nil {
			return 0, fmt.Errorf("ext4: %s: %w", name, err)
		}
	case ModeChar, ModeBlock:
		if a.Major < 256 && a.Minor < 256 {
			le.PutUint32(ri.b[0x28:], a.Major<<8|a.Minor)
		} else {
			le.PutUint32(ri.b[0x2c:], a.Minor&0xff|a.Major<<8|(a.Minor&^0xff)<<12)
		}
	}
	return num, w.insert(d, name, num, fileType(a.Mode))
}

// Symlink makes a symbolic link: a fast one (target in the inode) below 60 bytes.
func (w *Writer) Symlink(parent uint32, name, target string, a Attr) (uint32, error) {
	if err := w.maybeEvict(); err != nil {
		return 0, err
	}
	if len(target) == 0 || len(target) >= wBlockSize {
		return 0, fmt.Errorf("ext4: symlink %q: target of %d bytes (1..4095 allowed)", name, len(target))
	}
	d, err := w.dirForInsert(parent, name)
	if err != nil {
		return 0, err
	}
	a.Mode = ModeSymlink | a.Mode&0o7777
	num, ri, err := w.newInode(a)
	if err != nil {
		return 0, err
	}
	if len(target) < 60 {
		copy(ri.b[0x28:], target)
		ri.setSize(uint64(len(target)))
	} else if err := w.writeData(ri, strings.NewReader(target), int64(len(target))); err != nil {
		return 0, err
	}
	return num, w.insert(d, name, num, 7)
}

// Mkdir makes a directory.
func (w *Writer) Mkdir(parent uint32, name string, a Attr) (uint32, error) {
	if err := w.maybeEvict(); err != nil {
		return 0, err
	}
	d, err := w.dirForInsert(parent, name)
	if err != nil {
		return 0, err
	}
	a.Mode = ModeDir | a.Mode&0o7777
	num, ri, err := w.newInode(a)
	if err != nil {
		return 0, err
	}
	ri.setLinks(2)
	w.dirs[num] = newDir(num, parent)
	if err := w.insert(d, name, num, 2); err != nil {
		return 0, err
	}
	return num, w.addLink(parent, 1)
}

// Link adds name in parent for the existing non-directory inode target.
func (w *Writer) Link(parent uint32, name string, target uint32) error {
	if err := w.maybeEvict(); err != nil {
		return err
	}
	ri, err := w.inode(target)
	if err != nil {
		return err
	}
	if ri.isDir() || ri.links() == 0 {
		return fmt.Errorf("ext4: link %q: inode %d is a directory or unused", name, target)
	}
	if ri.links() >= maxLinks {
		return fmt.Errorf("ext4: link %q: inode %d has %d links", name, target, ri.links())
	}
	d, err := w.dirForInsert(parent, name)
	if err != nil {
		return err
	}
	if err := w.insert(d, name, target, fileType(ri.mode())); err != nil {
		return err
	}
	return w.addLink(target, 1)
}

// addLink changes an inode's link count; a directory above 65000 links counts as 1
// (dir_nlink).
func (w *Writer) addLink(num uint32, delta int) error {
	ri, err := w.inode(num)
	if err != nil {
		return err
	}
	n := int(ri.links())
	if ri.isDir() && n == 1 {
		ri.dirty = true
		return nil // dir_nlink: no longer counted
	}
	n += delta
	if ri.isDir() && n > maxLinks {
		n = 1
	}
	if n < 0 {
		return corrupt("inode %d link count below zero", num)
	}
	ri.setLinks(uint16(n))
	return nil
}

// SetAttr updates the owner, mode bits, times and xattrs (replacing the given names)
// of an existing inode, as extracting a directory over a directory does.
func (w *Writer) SetAttr(num uint32, a Attr) error {
	if err := w.maybeEvict(); err != nil {
		return err
	}
	ri, err := w.inode(num)
	if err != nil {
		return err
	}
	a.Mode = ri.mode()&modeType | a.Mode&0o7777
	ri.setOwner(a)
	ri.setTimes(a.Mtime, a.MtimeNsec)
	if len(a.Xattrs) > 0 {
		cur, err := w.xattrs(ri)
		if err != nil {
			return err
		}
		for k, v := range a.Xattrs {
			cur[k] = v
		}
		return w.setXattrs(ri, cur)
	}
	return nil
}

// SetMtime sets an inode's times (a directory's, after its children are written).
func (w *Writer) SetMtime(num uint32, sec int64, nsec uint32) error {
	ri, err := w.inode(num)
	if err != nil {
		return err
	}
	ri.setTimes(sec, nsec)
	return nil
}

func (w *Writer) xattrs(ri *rawInode) (map[string][]byte, error) {
	var blk []byte
	if b := ri.xattrBlock(); b != 0 {
		if b >= w.blocks {
			return nil, corrupt("xattr block %d outside the file system", b)
		}
		blk = make([]byte, wBlockSize)
		if err := readFull(w.dev, blk, int64(b)*wBlockSize); err != nil {
			return nil, err
		}
	}
	return parseXattrs(ri.b[:], wInodeSize, blk)
}

// Remove deletes name from directory parent; a directory is removed with
// everything under it. Blocks and inodes whose last link goes are freed.
func (w *Writer) Remove(parent uint32, name string) error {
	if err := w.maybeEvict(); err != nil {
		return err
	}
	d, err := w.loadDir(parent)
	if err != nil {
		return err
	}
	ino, ok := d.lookup(name)
	if !ok {
		return fmt.Errorf("ext4: remove %q: %w", name, fs.ErrNotExist)
	}
	ri, err := w.inode(ino)
	if err != nil {
		return err
	}
	if ri.isDir() {
		if err := w.removeTree(ino, 0); err != nil {
			return err
		}
		if err := w.addLink(parent, -1); err != nil {
			return err
		}
	}
	d.remove(name)
	if ri.isDir() {
		return w.release(ino, ri)
	}
	if ri.links() > 1 {
		return w.addLink(ino, -1)
	}
	return w.release(ino, ri)
}

// removeTree empties directory ino.
func (w *Writer) removeTree(ino uint32, depth int) error {
	if depth > 4096 {
		return corrupt("directory nesting deeper than 4096 under inode %d", ino)
	}
	d, err := w.loadDir(ino)
	if err != nil {
		return err
	}
	for _, name := range d.names() {
		ci, _ := d.lookup(name)
		cri, err := w.inode(ci)
		if err != nil {
			return err
		}
		if cri.isDir() {
			if err := w.removeTree(ci, depth+1); err != nil {
				return err
			}
			if err := w.addLink(ino, -1); err != nil {
				return err
			}
		}
		d.remove(name)
		if cri.isDir() || cri.links() <= 1 {
			if err := w.release(ci, cri); err != nil {
				return err
			}
		} else if err := w.addLink(ci, -1); err != nil {
			return err
		}
	}
	return nil
}

// release frees an inode with its data and xattr blocks.
func (w *Writer) release(num uint32, ri *rawInode) error {
	isDir := ri.isDir()
	if d := w.dirs[num]; d != nil {
		for _, b := range d.phys {
			if b != 0 {
				if err := w.freeRun(b, 1); err != nil {
					return err
				}
			}
		}
		if err := w.freeTree(ri); err != nil {
			return err
		}
	} else if ri.mode()&modeType == ModeRegular || ri.mode()&modeType == ModeSymlink || isDir {
		if err := w.freeData(ri); err != nil {
			return err
		}
	}
	if b := ri.xattrBlock(); b != 0 {
		if err := w.freeRun(b, 1); err != nil {
			return err
		}
	}
	w.freeInode(num, isDir)
	return nil
}

// Lookup finds name in directory parent.
func (w *Writer) Lookup(parent uint32, name string) (uint32, bool, error) {
	d, err := w.loadDir(parent)
	if err != nil {
		return 0, false, err
	}
	ino, ok := d.lookup(name)
	return ino, ok, nil
}

// Names lists directory ino's entries (without "." and "..") in directory order.
func (w *Writer) Names(ino uint32) ([]string, error) {
	d, err := w.loadDir(ino)
	if err != nil {
		return nil, err
	}
	return d.names(), nil
}

// IsDir reports whether inode num is a directory.
func (w *Writer) IsDir(num uint32) (bool, error) {
	ri, err := w.inode(num)
	if err != nil {
		return false, err
	}
	return ri.isDir(), nil
}

// RootIno is the root directory's inode number.
const RootIno = rootIno

var _ = bytes.Equal

// Mode returns inode num's mode (type and permission bits).
func (w *Writer) Mode(num uint32) (uint16, error) {
	ri, err := w.inode(num)
	if err != nil {
		return 0, err
	}
	return ri.mode(), nil
}

// Readlink returns the target of symlink num.
func (w *Writer) Readlink(num uint32) (string, error) {
	ri, err := w.inode(num)
	if err != nil {
		return "", err
	}
	size := ri.size()
	if ri.mode()&modeType != ModeSymlink || size == 0 || size >= wBlockSize {
		return "", corrupt("inode %d is not a symlink of a valid size", num)
	}
	if ri.flags()&flagExtents == 0 {
		if size >= 60 {
			return "", corrupt("symlink inode %d: %d bytes without extents", num, size)
		}
		return string(ri.b[0x28 : 0x28+size]), nil
	}
	exts, _, err := w.fileExtents(ri)
	if err != nil || len(exts) == 0 || exts[0].lblk != 0 || exts[0].pblk >= w.blocks {
		return "", corrupt("symlink inode %d: no data block (%v)", num, err)
	}
	b := make([]byte, wBlockSize)
	if err := readFull(w.dev, b, int64(exts[0].pblk)*wBlockSize); err != nil {
		return "", err
	}
	return string(b[:size]), nil
}

// XattrSupported reports whether ext4 stores the extended attribute name.
func XattrSupported(name string) bool {
	_, err := splitXattr(name)
	return err == nil
}

// POSIX ACLs: the xattr interface uses the VFS format (version 2, 8-byte entries);
// ext4 stores version 1 with 4-byte entries for the tags that carry no id.
const (
	aclUser  = 0x02
	aclGroup = 0x08
)

func aclToDisk(v []byte) ([]byte, error) {
	if len(v) < 4 || le.Uint32(v) != 2 || (len(v)-4)%8 != 0 {
		return nil, fmt.Errorf("ext4: POSIX ACL of %d bytes is not in the version 2 xattr format", len(v))
	}
	out := le.AppendUint32(nil, 1)
	for e := v[4:]; len(e) > 0; e = e[8:] {
		tag := le.Uint16(e)
		out = le.AppendUint16(out, tag)
		out = le.AppendUint16(out, le.Uint16(e[2:]))
		if tag == aclUser || tag == aclGroup {
			out = le.AppendUint32(out, le.Uint32(e[4:]))
		}
	}
	return out, nil
}

func aclFromDisk(v []byte) ([]byte, error) {
	if len(v) < 4 || le.Uint32(v) != 1 {
		return nil, corrupt("POSIX ACL of %d bytes without version 1", len(v))
	}
	out := le.AppendUint32(nil, 2)
	for e := v[4:]; len(e) > 0; {
		if len(e) < 4 {
			return nil, corrupt("truncated POSIX ACL entry")
		}
		tag, perm := le.Uint16(e), le.Uint16(e[2:])
		id := uint32(0xffffffff)
		n := 4
		if tag == aclUser || tag == aclGroup {
			if len(e) < 8 {
				return nil, corrupt("truncated POSIX ACL entry")
			}
			id, n = le.Uint32(e[4:]), 8
		}
		out = le.AppendUint16(out, tag)
		out = le.AppendUint16(out, perm)
		out = le.AppendUint32(out, id)
		e = e[n:]
	}
	return out, nil
}

// freeTree frees the blocks of an inode's extent tree (its index and leaf blocks,
// not the data they map).
func (w *Writer) freeTree(ri *rawInode) error {
	_, tree, err := w.fileExtents(ri)
	if err != nil {
		return err
	}
	for _, b := range tree {
		if err := w.freeRun(b, 1); err != nil {
			return err
		}
	}
	return nil
}
