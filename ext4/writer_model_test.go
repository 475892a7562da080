package ext4

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"sort"
	"strings"
	"testing"
	"time"
)

// model is what a test expects in the file system: path -> entry.
type model struct {
	t      *testing.T
	w      *Writer
	ino    map[string]uint32 // path -> inode, for directories and link targets
	want   map[string]*TreeEntry
	group  map[string]int // path -> hardlink group
	groups int
}

func newModel(t *testing.T) *model {
	m := &model{t: t, ino: map[string]uint32{"/": RootIno}, want: map[string]*TreeEntry{}, group: map[string]int{}}
	m.want["/"] = &TreeEntry{Stat: Stat{Mode: ModeDir | 0o755}}
	return m
}

func (m *model) parent(p string) uint32 {
	ino, ok := m.ino[path.Dir(p)]
	if !ok {
		m.t.Fatalf("no parent for %s", p)
	}
	return ino
}

func (m *model) mkdir(p string, mode uint16, mtime int64) {
	m.t.Helper()
	ino, err := m.w.Mkdir(m.parent(p), path.Base(p), Attr{Mode: mode, Mtime: mtime, UID: 7, GID: 8})
	if err != nil {
		m.t.Fatalf("mkdir %s: %v", p, err)
	}
	m.ino[p] = ino
	m.want[p] = &TreeEntry{Stat: Stat{Mode: ModeDir | mode, Mtime: mtime, UID: 7, GID: 8}}
}

func (m *model) file(p string, a Attr, data []byte) {
	m.t.Helper()
	ino, err := m.w.Create(m.parent(p), path.Base(p), a, bytes.NewReader(data), int64(len(data)))
	if err != nil {
		m.t.Fatalf("create %s: %v", p, err)
	}
	m.ino[p] = ino
	e := &TreeEntry{Stat: Stat{Mode: a.Mode, UID: a.UID, GID: a.GID, Mtime: a.Mtime, MtimeNsec: a.MtimeNsec, Major: a.Major, Minor: a.Minor}, Xattrs: a.Xattrs}
	if a.Mode&modeType == ModeRegular {
		e.Data, e.Size = data, int64(len(data))
	}
	m.want[p] = e
	m.groups++
	m.group[p] = m.groups
}

func (m *model) symlink(p, target string) {
	m.t.Helper()
	ino, err := m.w.Symlink(m.parent(p), path.Base(p), target, Attr{Mode: 0o777, Mtime: 5})
	if err != nil {
		m.t.Fatalf("symlink %s: %v", p, err)
	}
	m.ino[p] = ino
	m.want[p] = &TreeEntry{Stat: Stat{Mode: ModeSymlink | 0o777, Mtime: 5, Size: int64(len(target))}, Target: target}
	m.groups++
	m.group[p] = m.groups
}

func (m *model) link(p, target string) {
	m.t.Helper()
	if err := m.w.Link(m.parent(p), path.Base(p), m.ino[target]); err != nil {
		m.t.Fatalf("link %s: %v", p, err)
	}
	m.ino[p] = m.ino[target]
	m.want[p] = m.want[target]
	m.group[p] = m.group[target]
}

func (m *model) remove(p string) {
	m.t.Helper()
	if err := m.w.Remove(m.parent(p), path.Base(p)); err != nil {
		m.t.Fatalf("remove %s: %v", p, err)
	}
	for q := range m.want {
		if q == p || strings.HasPrefix(q, p+"/") {
			delete(m.want, q)
			delete(m.ino, q)
			delete(m.group, q)
		}
	}
}

// session reopens the writer on f, runs fn, closes, fscks and compares.
func (m *model) session(f *os.File, p string, fn func()) {
	m.t.Helper()
	var err error
	if m.w, err = OpenWriter(f); err != nil {
		m.t.Fatal(err)
	}
	fn()
	if err := m.w.Close(); err != nil {
		m.t.Fatal(err)
	}
	fsck(m.t, p)
	m.check(f)
}

func (m *model) check(f *os.File) {
	m.t.Helper()
	st, _ := f.Stat()
	r, err := Open(f, st.Size())
	if err != nil {
		m.t.Fatal(err)
	}
	got, err := r.Tree(1 << 30)
	if err != nil {
		m.t.Fatal(err)
	}
	delete(got, "/lost+found")
	// Link counts and hardlink identity follow from the model.
	links := map[int]int{}
	for p, g := range m.group {
		_ = p
		links[g]++
	}
	subdirs := map[string]int{}
	for p, e := range m.want {
		if e.Mode&modeType == ModeDir && p != "/" {
			subdirs[path.Dir(p)]++
		}
	}
	subdirs["/"]++ // lost+found
	var paths []string
	for p := range m.want {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	groupIno := map[int]uint32{}
	for _, p := range paths {
		w, g := m.want[p], got[p]
		if g == nil {
			m.t.Fatalf("%s: missing", p)
		}
		wantLinks := uint16(links[m.group[p]])
		if w.Mode&modeType == ModeDir {
			wantLinks = uint16(2 + subdirs[p])
		}
		if g.Mode != w.Mode || g.UID != w.UID || g.GID != w.GID || g.Mtime != w.Mtime || g.MtimeNsec != w.MtimeNsec ||
			g.Major != w.Major || g.Minor != w.Minor || g.Links != wantLinks || g.Target != w.Target {
			m.t.Fatalf("%s: got %+v links %d target %q, want %+v links %d target %q", p, g.Stat, g.Links, g.Target, w.Stat, wantLinks, w.Target)
		}
		if w.Mode&modeType != ModeDir && g.Size != w.Size {
			m.t.Fatalf("%s: size %d, want %d", p, g.Size, w.Size)
		}
		if !bytes.Equal(g.Data, w.Data) {
			m.t.Fatalf("%s: data differs (%d vs %d bytes)", p, len(g.Data), len(w.Data))
		}
		if fmt.Sprint(g.Xattrs) != fmt.Sprint(w.Xattrs) {
			m.t.Fatalf("%s: xattrs %q, want %q", p, g.Xattrs, w.Xattrs)
		}
		if gr, ok := m.group[p]; ok {
			if first, ok := groupIno[gr]; ok && first != g.Ino {
				m.t.Fatalf("%s: inode %d, its hardlink has %d", p, g.Ino, first)
			}
			groupIno[gr] = g.Ino
		}
		if m.ino[p] != g.Ino {
			m.t.Fatalf("%s: inode %d, writer said %d", p, g.Ino, m.ino[p])
		}
	}
	if len(got) != len(m.want) {
		for p := range got {
			if m.want[p] == nil {
				m.t.Fatalf("%s: unexpected", p)
			}
		}
	}
}

func randBytes(rnd *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rnd.Uint32())
	}
	return b
}

func TestWriterModel(t *testing.T) {
	f, p := newImage(t, 512<<20)
	m := newModel(t)
	rnd := rand.New(rand.NewPCG(3, 4))
	reg := func(mode uint16) Attr {
		return Attr{Mode: ModeRegular | mode, UID: 1, GID: 2, Mtime: 1_600_000_000, MtimeNsec: 123456789}
	}
	m.session(f, p, func() {
		m.mkdir("/a", 0o755, 10)
		m.mkdir("/a/b", 0o1777, -5)   // before 1970
		m.mkdir("/far", 0o700, 1<<33) // after 2038
		for _, n := range []int{0, 1, 59, 4095, 4096, 4097, 1<<20 + 3, 5 << 20} {
			m.file(fmt.Sprintf("/a/f%d", n), reg(0o644), randBytes(rnd, n))
		}
		holes := make([]byte, 3<<20)
		copy(holes[1<<20:], randBytes(rnd, 5000))
		m.file("/a/holes", reg(0o600), holes)
		m.file("/a/b/suid", reg(0o4755), []byte("#!/bin/sh\n"))
		m.file("/a/b/sgid", reg(0o2711), nil)
		m.file("/a/null", Attr{Mode: ModeChar | 0o666, Major: 1, Minor: 3}, nil)
		m.file("/a/bigdev", Attr{Mode: ModeBlock | 0o660, Major: 300, Minor: 70000}, nil)
		m.file("/a/fifo", Attr{Mode: ModeFIFO | 0o644}, nil)
		m.file("/a/cap", Attr{Mode: ModeRegular | 0o755, Xattrs: map[string][]byte{
			"security.capability": {1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			"user.small":          []byte("v"),
		}}, []byte("x"))
		m.file("/a/bigx", Attr{Mode: ModeRegular | 0o644, Xattrs: map[string][]byte{
			"user.big": bytes.Repeat([]byte("y"), 3000), "trusted.t": []byte("tt"), "user.empty": {},
		}}, nil)
		m.symlink("/a/fast", "f1")
		m.symlink("/a/slow", strings.Repeat("long/", 200))
		m.link("/a/b/hard", "/a/f4096")
		m.link("/hard2", "/a/f4096")
		m.file("/a/b/only-inside", reg(0o644), []byte("in"))
		m.link("/outside", "/a/b/only-inside")
	})
	m.session(f, p, func() {
		m.remove("/a/f4096") // two links remain
		m.remove("/a/b")     // recursive, with a link to outside
		m.remove("/a/f1048579")
		if err := m.w.SetAttr(m.ino["/a"], Attr{Mode: 0o711, UID: 3, GID: 4, Mtime: 99, Xattrs: map[string][]byte{"user.d": []byte("dir")}}); err != nil {
			t.Fatal(err)
		}
		e := m.want["/a"]
		e.Mode, e.UID, e.GID, e.Mtime, e.Xattrs = ModeDir|0o711, 3, 4, 99, map[string][]byte{"user.d": []byte("dir")}
		m.mkdir("/a/b", 0o755, 1)
		m.mkdir("/many", 0o755, 1)
		start := time.Now()
		for i := range 10000 {
			m.file(fmt.Sprintf("/many/entry-with-a-longish-name-%05d", i), reg(0o644), nil)
		}
		t.Logf("10,000 entries in %v", time.Since(start))
	})
	m.session(f, p, func() {
		for i := 0; i < 10000; i += 3 {
			m.remove(fmt.Sprintf("/many/entry-with-a-longish-name-%05d", i))
		}
		m.mkdir("/frag", 0o755, 1)
		for i := range 3000 {
			m.file(fmt.Sprintf("/frag/%d", i), reg(0o644), randBytes(rnd, 100))
		}
		for i := 0; i < 3000; i += 2 {
			m.remove(fmt.Sprintf("/frag/%d", i))
		}
	})
	m.session(f, p, func() {
		// Fills the 1-block holes: an extent tree of depth 2.
		m.file("/frag/big", reg(0o644), randBytes(rnd, 8<<20))
		ri, _ := m.w.inode(m.ino["/frag/big"])
		if depth := le.Uint16(ri.b[0x28+6:]); depth < 2 {
			exts, _, _ := m.w.fileExtents(ri)
			t.Errorf("extent tree depth %d with %d extents, want 2", depth, len(exts))
		}
	})
	m.session(f, p, func() {
		m.remove("/frag")
		m.remove("/many")
	})
}
