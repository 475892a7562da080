package ext4

import (
	"fmt"
)

// FixedUUID is the file-system UUID (and directory hash seed) every Mkfs uses, the
// one newer PhotonLibOS make_extfs uses: fixed so that images are reproducible.
var FixedUUID = [16]byte{0xbd, 0xf7, 0xbb, 0x2e, 0xc2, 0x31, 0x43, 0xce, 0x87, 0xc2, 0x29, 0x97, 0x92, 0x45, 0x8e, 0xf5}

const (
	blocksPerGroup = 8 * wBlockSize
	inodeRatio     = 16384
	// MinMkfsSize is the smallest file system Mkfs makes.
	MinMkfsSize = 16 << 20
)

// Mkfs writes an empty ext4 file system of size bytes (rounded down to whole blocks)
// to dev with the reference's parameters (make_extfs): 4 KiB blocks, 256-byte inodes,
// one inode per 16 KiB, 5% reserved, no journal, features 64bit, sparse_super,
// sparse_super2 (backups in groups 1 and last), filetype, dir_index, ext_attr,
// dir_nlink, large_file, huge_file, flex_bg, extents, extra_isize; the fixed UUID and
// hash seed, zero timestamps. It writes only metadata: dev must read as zeros
// elsewhere (a fresh sparse file or an empty LSMT layer). resize_inode is left out
// (obd never grows a file system), and lost+found is one block.
func Mkfs(dev Device, size int64) error {
	if size < MinMkfsSize {
		return fmt.Errorf("ext4: mkfs: %d bytes is below the minimum %d", size, MinMkfsSize)
	}
	blocks := uint64(size) / wBlockSize
	if blocks > 1<<32*blocksPerGroup/wDescSize {
		return fmt.Errorf("ext4: mkfs: %d bytes is too large", size)
	}
	groups := (blocks + blocksPerGroup - 1) / blocksPerGroup
	gdtBlocks := (groups*wDescSize + wBlockSize - 1) / wBlockSize
	inodes := blocks * wBlockSize / inodeRatio
	const perTableBlock = wBlockSize / wInodeSize
	ipg := (inodes + groups - 1) / groups
	ipg = (ipg + perTableBlock - 1) / perTableBlock * perTableBlock
	ipg = min(ipg, blocksPerGroup)
	itb := ipg / perTableBlock
	backups := [2]uint64{}
	if groups > 1 {
		backups[0] = 1
	}
	if groups > 2 {
		backups[1] = groups - 1
	}
	hasSuper := func(g uint64) bool { return g == 0 || g == backups[0] && g != 0 || g == backups[1] && g != 0 }
	overhead := func(g uint64) uint64 {
		o := 2 + itb
		if hasSuper(g) {
			o += 1 + gdtBlocks
		}
		return o
	}
	// A last group too small for its metadata and some data is dropped, as mke2fs does.
	if last := blocks - (groups-1)*blocksPerGroup; groups > 1 && last < overhead(groups-1)+64 {
		blocks -= last
		groups--
		if groups > 2 {
			backups[1] = groups - 1
		} else {
			backups[1] = 0
		}
		gdtBlocks = (groups*wDescSize + wBlockSize - 1) / wBlockSize
	}
	totalInodes := ipg * groups

	gdt := make([]byte, gdtBlocks*wBlockSize)
	var freeBlocks uint64
	bitmap := make([]byte, wBlockSize)
	for g := range groups {
		start := g * blocksPerGroup
		gblocks := min(blocksPerGroup, blocks-start)
		next := start
		if hasSuper(g) {
			next += 1 + gdtBlocks
		}
		bb, ib, it := next, next+1, next+2
		used := next + 2 + itb - start
		if used+1 > gblocks {
			return fmt.Errorf("ext4: mkfs: group %d has %d blocks, its metadata needs %d", g, gblocks, used)
		}
		clear(bitmap)
		for i := uint64(0); i < used; i++ {
			bitmap[i/8] |= 1 << (i % 8)
		}
		for i := gblocks; i < blocksPerGroup; i++ { // padding past the end
			bitmap[i/8] |= 1 << (i % 8)
		}
		if _, err := dev.WriteAt(bitmap, int64(bb)*wBlockSize); err != nil {
			return fmt.Errorf("ext4: mkfs: %w", err)
		}
		clear(bitmap)
		reserved := uint64(0)
		if g == 0 {
			reserved = lpfIno - 1 // inodes 1..10
		}
		for i := uint64(0); i < reserved; i++ {
			bitmap[i/8] |= 1 << (i % 8)
		}
		for i := ipg; i < 8*wBlockSize; i++ {
			bitmap[i/8] |= 1 << (i % 8)
		}
		if _, err := dev.WriteAt(bitmap, int64(ib)*wBlockSize); err != nil {
			return fmt.Errorf("ext4: mkfs: %w", err)
		}
		d := gdt[g*wDescSize:]
		put64 := func(lo, hi int, v uint64) { le.PutUint32(d[lo:], uint32(v)); le.PutUint32(d[hi:], uint32(v>>32)) }
		put64(0x0, 0x20, bb)
		put64(0x4, 0x24, ib)
		put64(0x8, 0x28, it)
		free := gblocks - used
		le.PutUint16(d[0xc:], uint16(free))
		le.PutUint16(d[0x2c:], uint16(free>>16))
		fi := ipg - reserved
		le.PutUint16(d[0xe:], uint16(fi))
		le.PutUint16(d[0x2e:], uint16(fi>>16))
		freeBlocks += free
	}

	sb := make([]byte, 1024)
	le.PutUint32(sb[0x0:], uint32(totalInodes))
	le.PutUint32(sb[0x4:], uint32(blocks))
	le.PutUint32(sb[0x150:], uint32(blocks>>32))
	r := blocks * 5 / 100
	le.PutUint32(sb[0x8:], uint32(r))
	le.PutUint32(sb[0x154:], uint32(r>>32))
	le.PutUint32(sb[0xc:], uint32(freeBlocks))
	le.PutUint32(sb[0x158:], uint32(freeBlocks>>32))
	le.PutUint32(sb[0x10:], uint32(totalInodes-(lpfIno-1)))
	le.PutUint32(sb[0x18:], 2) // 4 KiB blocks
	le.PutUint32(sb[0x1c:], 2)
	le.PutUint32(sb[0x20:], blocksPerGroup)
	le.PutUint32(sb[0x24:], blocksPerGroup)
	le.PutUint32(sb[0x28:], uint32(ipg))
	le.PutUint16(sb[0x36:], 0xffff) // max mount count -1
	le.PutUint16(sb[0x38:], superMagic)
	le.PutUint16(sb[0x3a:], 1) // clean
	le.PutUint16(sb[0x3c:], 1) // errors: continue
	le.PutUint32(sb[0x4c:], 1) // dynamic revision
	le.PutUint32(sb[0x54:], lpfIno)
	le.PutUint16(sb[0x58:], wInodeSize)
	le.PutUint32(sb[0x5c:], wantCompat)
	le.PutUint32(sb[0x60:], wantIncompat)
	le.PutUint32(sb[0x64:], wantRoCompat)
	copy(sb[0x68:], FixedUUID[:])
	copy(sb[0xec:], FixedUUID[:]) // hash seed
	sb[0xfc] = 1                  // half_md4
	le.PutUint16(sb[0xfe:], wDescSize)
	le.PutUint16(sb[0x15c:], wExtraIsize)
	le.PutUint16(sb[0x15e:], wExtraIsize)
	le.PutUint32(sb[0x160:], 1) // signed directory hash
	sb[0x174] = 0               // log_groups_per_flex
	le.PutUint32(sb[0x24c:], uint32(backups[0]))
	le.PutUint32(sb[0x250:], uint32(backups[1]))

	copies := []uint64{0}
	for _, g := range backups {
		if g != 0 {
			copies = append(copies, g)
		}
	}
	for _, g := range copies {
		blk := make([]byte, wBlockSize)
		off := int64(g*blocksPerGroup) * wBlockSize
		if g == 0 {
			copy(blk[superOffset:], sb)
		} else {
			copy(blk, sb)
			le.PutUint16(blk[0x5a:], uint16(g)) // block_group_nr
		}
		if _, err := dev.WriteAt(blk, off); err != nil {
			return fmt.Errorf("ext4: mkfs: %w", err)
		}
		if _, err := dev.WriteAt(gdt, off+wBlockSize); err != nil {
			return fmt.Errorf("ext4: mkfs: %w", err)
		}
	}

	w, err := OpenWriter(dev)
	if err != nil {
		return fmt.Errorf("ext4: mkfs: reopening: %w", err)
	}
	// The root directory (inode 2) and lost+found (inode 11).
	root := &rawInode{dirty: true}
	le.PutUint16(root.b[0x80:], wExtraIsize)
	root.setOwner(Attr{Mode: ModeDir | 0o755})
	root.setLinks(2)
	w.inodeCache[rootIno] = root
	w.markInode(rootIno)
	w.descCount(0, 0x10, 0x30, 1)
	w.dirs[rootIno] = newDir(rootIno, rootIno)
	lpf, err := w.allocInode(true)
	if err != nil || lpf != lpfIno {
		return fmt.Errorf("ext4: mkfs: lost+found got inode %d: %v", lpf, err)
	}
	ri := w.inodeCache[lpf]
	ri.setOwner(Attr{Mode: ModeDir | 0o700})
	ri.setLinks(2)
	w.dirs[lpf] = newDir(lpf, rootIno)
	w.dirs[rootIno].add("lost+found", lpf, 2)
	if err := w.addLink(rootIno, 1); err != nil {
		return err
	}
	return w.Close()
}

// markInode marks a reserved inode in use (mkfs only).
func (w *Writer) markInode(num uint32) {
	g, i := uint64(num-1)/uint64(w.inodesPerGr), (num-1)%w.inodesPerGr
	if w.inodeBitmap[g][i/8]&(1<<(i%8)) == 0 {
		w.inodeBitmap[g][i/8] |= 1 << (i % 8)
		w.dirtyIB[g] = true
		w.freeInodes++
		w.freeInodes--
	}
}
