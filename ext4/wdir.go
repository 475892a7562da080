package ext4

import (
	"fmt"
	"io/fs"
	"strings"
)

// Directories are linear (no htree): each loaded directory keeps its blocks' entries
// and a name index in memory, so lookups and inserts in a large directory are cheap,
// and only the blocks whose entries changed are written back.

type dent struct {
	name  string
	ino   uint32
	ftype uint8
}

func recLen(name string) int { return 8 + pad4(len(name)) }

type dirBlock struct {
	ents  []dent
	used  int
	dirty bool
}

type dirLoc struct {
	blk int
	ino uint32
}

type dir struct {
	ino    uint32
	blocks []*dirBlock
	phys   []uint64 // physical block of each logical block; 0: not yet allocated
	index  map[string]dirLoc
	dirty  bool
	grown  bool // blocks were added: the extent tree is rebuilt on flush
	hint   int  // first block that may have room
}

func newDir(num, parent uint32) *dir {
	d := &dir{ino: num, index: map[string]dirLoc{}, dirty: true, grown: true}
	b := &dirBlock{dirty: true}
	d.blocks = append(d.blocks, b)
	d.phys = append(d.phys, 0)
	b.ents = []dent{{".", num, 2}, {"..", parent, 2}}
	b.used = recLen(".") + recLen("..")
	return d
}

func (d *dir) lookup(name string) (uint32, bool) {
	l, ok := d.index[name]
	return l.ino, ok
}

func (d *dir) names() []string {
	var out []string
	for _, b := range d.blocks {
		for _, e := range b.ents {
			if e.name != "." && e.name != ".." {
				out = append(out, e.name)
			}
		}
	}
	return out
}

func (d *dir) remove(name string) {
	l, ok := d.index[name]
	if !ok {
		return
	}
	b := d.blocks[l.blk]
	for i, e := range b.ents {
		if e.name == name {
			b.ents = append(b.ents[:i], b.ents[i+1:]...)
			b.used -= recLen(name)
			break
		}
	}
	b.dirty = true
	d.dirty = true
	delete(d.index, name)
	d.hint = min(d.hint, l.blk)
}

func (d *dir) add(name string, ino uint32, ftype uint8) {
	need := recLen(name)
	i := d.hint
	for ; i < len(d.blocks); i++ {
		if d.blocks[i].used+need <= wBlockSize {
			break
		}
	}
	d.hint = i
	if i == len(d.blocks) {
		d.blocks = append(d.blocks, &dirBlock{})
		d.phys = append(d.phys, 0)
		d.grown = true
	}
	b := d.blocks[i]
	b.ents = append(b.ents, dent{name, ino, ftype})
	b.used += need
	b.dirty = true
	d.dirty = true
	d.index[name] = dirLoc{i, ino}
}

func checkName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("ext4: invalid file name %q", name)
	case len(name) > 255:
		return fmt.Errorf("ext4: file name %.40q... is %d bytes (at most 255)", name, len(name))
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("ext4: file name %q contains '/' or NUL", name)
	}
	return nil
}

func (w *Writer) dirForInsert(parent uint32, name string) (*dir, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	d, err := w.loadDir(parent)
	if err != nil {
		return nil, err
	}
	if _, ok := d.index[name]; ok {
		return nil, fmt.Errorf("ext4: %q in directory inode %d: %w", name, parent, fs.ErrExist)
	}
	return d, nil
}

func (w *Writer) insert(d *dir, name string, ino uint32, ftype uint8) error {
	d.add(name, ino, ftype)
	return nil
}

// loadDir reads directory num into memory.
func (w *Writer) loadDir(num uint32) (*dir, error) {
	if d := w.dirs[num]; d != nil {
		return d, nil
	}
	ri, err := w.inode(num)
	if err != nil {
		return nil, err
	}
	if !ri.isDir() || ri.links() == 0 {
		return nil, fmt.Errorf("ext4: inode %d is not a directory", num)
	}
	if ri.flags()&flagInlineData != 0 {
		return nil, fmt.Errorf("%w: inline-data directory inode %d", ErrUnsupported, num)
	}
	exts, _, err := w.fileExtents(ri)
	if err != nil {
		return nil, fmt.Errorf("directory inode %d: %w", num, err)
	}
	nblk := ri.size() / wBlockSize
	if ri.size()%wBlockSize != 0 || nblk == 0 || nblk > maxDirSize/wBlockSize {
		return nil, corrupt("directory inode %d of %d bytes", num, ri.size())
	}
	d := &dir{ino: num, index: map[string]dirLoc{}, phys: make([]uint64, nblk)}
	for _, e := range exts {
		for k := uint32(0); k < e.n; k++ {
			l := uint64(e.lblk) + uint64(k)
			if l < nblk {
				d.phys[l] = e.pblk + uint64(k)
			}
		}
	}
	buf := make([]byte, wBlockSize)
	for l, p := range d.phys {
		if p == 0 || p >= w.blocks {
			return nil, corrupt("directory inode %d: block %d is a hole or outside the file system", num, l)
		}
		if err := readFull(w.dev, buf, int64(p)*wBlockSize); err != nil {
			return nil, fmt.Errorf("ext4: reading directory %d: %w", num, err)
		}
		b := &dirBlock{}
		for off := 0; off+8 <= len(buf); {
			ino := le.Uint32(buf[off:])
			rl := int(le.Uint16(buf[off+4:]))
			nl := int(buf[off+6])
			if rl < 8 || rl%4 != 0 || rl > len(buf)-off || 8+nl > rl {
				return nil, corrupt("directory inode %d block %d: entry at %d: record length %d, name length %d", num, l, off, rl, nl)
			}
			if ino != 0 && nl > 0 {
				name := string(buf[off+8 : off+8+nl])
				b.ents = append(b.ents, dent{name, ino, buf[off+7]})
				b.used += recLen(name)
				if name != "." && name != ".." {
					d.index[name] = dirLoc{l, ino}
				}
			}
			off += rl
		}
		d.blocks = append(d.blocks, b)
	}
	if len(d.blocks[0].ents) < 2 || d.blocks[0].ents[0].name != "." || d.blocks[0].ents[1].name != ".." {
		return nil, corrupt("directory inode %d does not start with . and ..", num)
	}
	if ri.flags()&0x1000 != 0 { // htree index: rewritten linear
		le.PutUint32(ri.b[0x20:], ri.flags()&^0x1000)
		ri.dirty = true
		d.blocks[0].dirty = true
		d.dirty = true
	}
	w.dirs[num] = d
	return d, nil
}

// flushDir writes a directory's changed blocks, allocating new ones.
func (w *Writer) flushDir(d *dir) error {
	if !d.dirty {
		return nil
	}
	ri, err := w.inode(d.ino)
	if err != nil {
		return err
	}
	if d.grown {
		if err := w.freeTree(ri); err != nil {
			return err
		}
		goal := w.blockGoal
		var exts []extent
		for l, p := range d.phys {
			if p == 0 {
				if l > 0 && d.phys[l-1] != 0 {
					goal = d.phys[l-1] + 1
				}
				b, _, err := w.allocRun(goal, 1)
				if err != nil {
					return err
				}
				d.phys[l] = b
				d.blocks[l].dirty = true
			}
			exts = appendExtent(exts, uint32(l), d.phys[l], 1)
		}
		nt, err := w.setExtents(ri, exts, d.phys[len(d.phys)-1])
		if err != nil {
			return err
		}
		n512 := (uint64(len(d.phys)) + nt) * (wBlockSize / 512)
		if ri.xattrBlock() != 0 {
			n512 += wBlockSize / 512
		}
		ri.setBlocks512(n512)
		ri.setSize(uint64(len(d.phys)) * wBlockSize)
	}
	buf := make([]byte, wBlockSize)
	for l, b := range d.blocks {
		if !b.dirty {
			continue
		}
		clear(buf)
		off := 0
		for i, e := range b.ents {
			rl := recLen(e.name)
			if i == len(b.ents)-1 {
				rl = wBlockSize - off
			}
			le.PutUint32(buf[off:], e.ino)
			le.PutUint16(buf[off+4:], uint16(rl))
			buf[off+6] = byte(len(e.name))
			buf[off+7] = e.ftype
			copy(buf[off+8:], e.name)
			off += rl
		}
		if len(b.ents) == 0 {
			le.PutUint16(buf[4:], wBlockSize)
		}
		if _, err := w.dev.WriteAt(buf, int64(d.phys[l])*wBlockSize); err != nil {
			return fmt.Errorf("ext4: writing directory %d: %w", d.ino, err)
		}
		b.dirty = false
	}
	d.dirty, d.grown = false, false
	return nil
}
