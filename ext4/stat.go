package ext4

import (
	"fmt"
)

// Stat is an inode's metadata as ls -l and getfattr show it.
type Stat struct {
	Mode         uint16
	UID, GID     uint32
	Size         int64
	Links        uint16
	Mtime        int64
	MtimeNsec    uint32
	Major, Minor uint32 // devices
}

func (f *FS) rawInode(num uint32) ([]byte, error) {
	if _, err := f.Inode(num); err != nil { // range and table checks
		return nil, err
	}
	g := uint64(num-1) / uint64(f.inodesPerGr)
	idx := int64(num-1) % int64(f.inodesPerGr)
	table, err := f.inodeTable(g)
	if err != nil {
		return nil, err
	}
	b := make([]byte, f.inodeSize)
	if err := readFull(f.r, b, int64(table)*f.blockSize+idx*f.inodeSize); err != nil {
		return nil, fmt.Errorf("ext4: reading inode %d: %w", num, err)
	}
	return b, nil
}

// Stat reads inode num's metadata.
func (f *FS) Stat(num uint32) (*Stat, error) {
	b, err := f.rawInode(num)
	if err != nil {
		return nil, err
	}
	s := &Stat{
		Mode:  le.Uint16(b[0:]),
		UID:   uint32(le.Uint16(b[2:])),
		GID:   uint32(le.Uint16(b[0x18:])),
		Size:  int64(uint64(le.Uint32(b[4:])) | uint64(le.Uint32(b[0x6c:]))<<32),
		Links: le.Uint16(b[0x1a:]),
		Mtime: int64(int32(le.Uint32(b[0x10:]))),
	}
	s.UID |= uint32(le.Uint16(b[0x78:])) << 16
	s.GID |= uint32(le.Uint16(b[0x7a:])) << 16
	if len(b) > 0x8c && 128+int(le.Uint16(b[0x80:])) >= 0x8c {
		extra := le.Uint32(b[0x88:])
		s.Mtime += int64(extra&3) << 32
		s.MtimeNsec = extra >> 2
	}
	if t := s.Mode & modeType; t == ModeChar || t == ModeBlock {
		if old := le.Uint32(b[0x28:]); old != 0 {
			s.Major, s.Minor = old>>8&0xff, old&0xff
		} else {
			n := le.Uint32(b[0x2c:])
			s.Major, s.Minor = n>>8&0xfff, n&0xff|n>>12&0xfff00
		}
	}
	return s, nil
}

// Xattrs reads inode num's extended attributes (in-inode and block).
func (f *FS) Xattrs(num uint32) (map[string][]byte, error) {
	b, err := f.rawInode(num)
	if err != nil {
		return nil, err
	}
	var blk []byte
	if xb := uint64(le.Uint32(b[0x68:])) | uint64(le.Uint16(b[0x76:]))<<32; xb != 0 {
		if xb >= f.blocks {
			return nil, corrupt("inode %d: xattr block %d outside the file system", num, xb)
		}
		blk = make([]byte, f.blockSize)
		if err := readFull(f.r, blk, int64(xb)*f.blockSize); err != nil {
			return nil, err
		}
	}
	m, err := parseXattrs(b, int(f.inodeSize), blk)
	if err != nil {
		return nil, fmt.Errorf("inode %d: %w", num, err)
	}
	return m, nil
}

func parseXattrs(ib []byte, inodeSize int, blk []byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	if inodeSize > 128 && len(ib) >= inodeSize {
		start := 128 + int(le.Uint16(ib[0x80:]))
		if start+4 <= inodeSize && le.Uint32(ib[start:]) == 0xEA020000 {
			if err := parseXattrEntries(ib[start+4:inodeSize], 0, 0, out); err != nil {
				return nil, fmt.Errorf("in-inode xattrs: %w", err)
			}
		}
	}
	if blk != nil {
		if le.Uint32(blk) != 0xEA020000 {
			return nil, corrupt("xattr block without magic")
		}
		if err := parseXattrEntries(blk, 32, 0, out); err != nil {
			return nil, fmt.Errorf("xattr block: %w", err)
		}
	}
	return out, nil
}

func parseXattrEntries(region []byte, off, base int, out map[string][]byte) error {
	for off+16 <= len(region) && le.Uint32(region[off:]) != 0 {
		e := region[off:]
		nl, idx := int(e[0]), e[1]
		voff, vsz := int(le.Uint16(e[2:])), int(le.Uint32(e[8:]))
		if off+16+nl > len(region) || le.Uint32(e[4:]) != 0 || voff+base < 0 || vsz > len(region) || voff+base+vsz > len(region) {
			return corrupt("xattr entry at %d out of bounds", off)
		}
		prefix := ""
		for _, p := range xattrPrefixes {
			if p.index == idx {
				prefix = p.prefix
			}
		}
		if prefix == "" {
			return corrupt("xattr entry at %d: name index %d", off, idx)
		}
		v := append([]byte{}, region[voff+base:voff+base+vsz]...)
		if idx == 2 || idx == 3 {
			var err error
			if v, err = aclFromDisk(v); err != nil {
				return err
			}
		}
		out[prefix+string(e[16:16+nl])] = v
		off += pad4(16 + nl)
	}
	return nil
}

// Readlink returns a symlink's target.
func (f *FS) Readlink(in *Inode) (string, error) {
	if !in.IsSymlink() || in.Size <= 0 || in.Size >= f.blockSize {
		return "", fmt.Errorf("ext4: inode %d is not a symlink of a valid size", in.Num)
	}
	if in.Flags&flagExtents == 0 && in.Size < 60 {
		return string(in.block[:in.Size]), nil
	}
	b, err := f.ReadFile(in, f.blockSize)
	return string(b), err
}

// ReadFile returns a regular file's (or slow symlink's) data, at most limit bytes.
func (f *FS) ReadFile(in *Inode, limit int64) ([]byte, error) {
	if in.Size > limit {
		return nil, fmt.Errorf("ext4: inode %d: %d bytes, more than %d", in.Num, in.Size, limit)
	}
	exts, err := f.Extents(in)
	if err != nil {
		return nil, err
	}
	out := make([]byte, in.Size)
	for _, e := range exts {
		n := min(e.Length, in.Size-e.Logical)
		if err := readFull(f.r, out[e.Logical:e.Logical+n], e.Physical); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// TreeEntry describes one path of a file system, for comparing trees.
type TreeEntry struct {
	Stat
	Ino    uint32
	Target string            // symlinks
	Data   []byte            // regular files
	Xattrs map[string][]byte // nil when there are none
}

// Tree reads every path under the root (except /lost+found) with its metadata,
// xattrs, link targets and file contents (files above maxFile bytes are an error).
func (f *FS) Tree(maxFile int64) (map[string]*TreeEntry, error) {
	root, err := f.Inode(rootIno)
	if err != nil {
		return nil, err
	}
	out := map[string]*TreeEntry{}
	add := func(p string, in *Inode) error {
		st, err := f.Stat(in.Num)
		if err != nil {
			return err
		}
		e := &TreeEntry{Stat: *st, Ino: in.Num}
		if e.Xattrs, err = f.Xattrs(in.Num); err != nil {
			return err
		}
		if len(e.Xattrs) == 0 {
			e.Xattrs = nil
		}
		switch {
		case in.IsSymlink():
			e.Target, err = f.Readlink(in)
		case in.IsRegular():
			e.Data, err = f.ReadFile(in, maxFile)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		out[p] = e
		return nil
	}
	if err := add("/", root); err != nil {
		return nil, err
	}
	err = f.Walk(root, "/", func(p string, in *Inode) error {
		if p == "/lost+found" {
			return nil
		}
		return add(p, in)
	})
	return out, err
}
