package convert

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/ext4"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
)

// entry is one tar member a test writes.
type entry struct {
	hdr  tar.Header
	data []byte
}

func dirE(name string, mode int64, mtime int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: time.Unix(mtime, 0)}}
}

func fileE(name string, mode int64, data []byte) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(1000, 0)}, data: data}
}

func linkE(name, target string, typ byte) entry {
	return entry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o777, ModTime: time.Unix(1000, 0)}}
}

func makeTar(t testing.TB, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.hdr
		if h.Format == tar.FormatUnknown && len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// node is what the model expects at a path; hardlinked paths share a node.
type node struct {
	typ          byte
	mode         int64
	uid, gid     int
	mtime        time.Time
	data         []byte
	target       string
	major, minor int64
	xattrs       map[string]string
}

// model applies layers with OCI semantics to a map, independently of the converter.
type model struct {
	t     testing.TB
	nodes map[string]*node
}

func newModel(t testing.TB) *model {
	return &model{t: t, nodes: map[string]*node{"/": {typ: tar.TypeDir, mode: 0o755}}}
}

func (m *model) removeAll(p string, keep map[string]bool) {
	for q := range m.nodes {
		if (q == p || strings.HasPrefix(q, p+"/")) && !keep[q] && q != "/" {
			delete(m.nodes, q)
		}
	}
}

func (m *model) apply(es []entry) {
	created := map[string]bool{}
	for _, e := range es {
		m.applyEntry(e, created)
	}
}

func (m *model) applyEntry(e entry, created map[string]bool) {
	{
		p := path.Clean("/" + e.hdr.Name)
		base, dir := path.Base(p), path.Dir(p)
		if base == ".wh..wh..opq" {
			for q := range m.nodes {
				if q != "/" && path.Dir(q) == dir && !created[q] {
					m.removeAll(q, nil)
				}
			}
			return
		}
		if strings.HasPrefix(base, ".wh.") {
			victim := path.Join(dir, base[4:])
			if !created[victim] {
				m.removeAll(victim, nil)
			}
			return
		}
		for q := dir; q != "/"; q = path.Dir(q) {
			if m.nodes[q] == nil {
				m.nodes[q] = &node{typ: tar.TypeDir, mode: 0o755, mtime: e.hdr.ModTime}
			}
			created[q] = true
		}
		created[p] = true
		old := m.nodes[p]
		if old != nil && !(old.typ == tar.TypeDir && e.hdr.Typeflag == tar.TypeDir) {
			m.removeAll(p, nil)
			old = nil
		}
		n := &node{typ: e.hdr.Typeflag, mode: e.hdr.Mode & 0o7777, uid: e.hdr.Uid, gid: e.hdr.Gid, mtime: e.hdr.ModTime,
			data: e.data, target: e.hdr.Linkname, major: e.hdr.Devmajor, minor: e.hdr.Devminor}
		for k, v := range e.hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if n.xattrs == nil {
					n.xattrs = map[string]string{}
				}
				n.xattrs[x] = v
			}
		}
		switch {
		case e.hdr.Typeflag == tar.TypeLink:
			tgt := m.nodes[path.Clean("/"+e.hdr.Linkname)]
			if tgt == nil {
				m.t.Fatalf("model: link %s to missing %s", p, e.hdr.Linkname)
			}
			m.nodes[p] = tgt
		case old != nil: // directory over directory: metadata, xattrs merged
			for k, v := range old.xattrs {
				if _, ok := n.xattrs[k]; !ok {
					if n.xattrs == nil {
						n.xattrs = map[string]string{}
					}
					n.xattrs[k] = v
				}
			}
			*old = *n
		default:
			m.nodes[p] = n
		}
	}
}

var typeOfMode = map[uint16]byte{ext4.ModeDir: tar.TypeDir, ext4.ModeRegular: tar.TypeReg, ext4.ModeSymlink: tar.TypeSymlink,
	ext4.ModeChar: tar.TypeChar, ext4.ModeBlock: tar.TypeBlock, ext4.ModeFIFO: tar.TypeFifo}

// check compares the file system in r with the model: type, mode, owner, size,
// content, link target, device numbers, xattrs, hardlink identity, mtime, links.
func (m *model) check(r io.ReaderAt, size int64) {
	m.t.Helper()
	f, err := ext4.Open(r, size)
	if err != nil {
		m.t.Fatal(err)
	}
	got, err := f.Tree(1 << 30)
	if err != nil {
		m.t.Fatal(err)
	}
	delete(got, "/lost+found")
	names := map[*node]int{}
	subdirs := map[string]int{"/": 1} // lost+found
	for p, n := range m.nodes {
		names[n]++
		if n.typ == tar.TypeDir && p != "/" {
			subdirs[path.Dir(p)]++
		}
	}
	inoOf := map[*node]uint32{}
	var paths []string
	for p := range m.nodes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		n, g := m.nodes[p], got[p]
		if g == nil {
			m.t.Fatalf("%s: missing from the image", p)
		}
		typ := n.typ
		if typ == tar.TypeLink || typ == tar.TypeRegA {
			typ = tar.TypeReg
		}
		wantLinks := names[n]
		if typ == tar.TypeDir {
			wantLinks = 2 + subdirs[p]
		}
		if typeOfMode[g.Mode&0xF000] != typ || int64(g.Mode&0o7777) != n.mode || int(g.UID) != n.uid || int(g.GID) != n.gid ||
			int(g.Links) != wantLinks || g.Target != n.target || int64(g.Major) != n.major || int64(g.Minor) != n.minor {
			m.t.Fatalf("%s: got %+v target %q, want type %c mode %o uid %d gid %d links %d target %q dev %d:%d",
				p, g.Stat, g.Target, typ, n.mode, n.uid, n.gid, wantLinks, n.target, n.major, n.minor)
		}
		if p != "/" && (g.Mtime != n.mtime.Unix() || g.MtimeNsec != uint32(n.mtime.Nanosecond())) {
			m.t.Fatalf("%s: mtime %d.%09d, want %v", p, g.Mtime, g.MtimeNsec, n.mtime)
		}
		if typ == tar.TypeReg && (!bytes.Equal(g.Data, n.data) || g.Size != int64(len(n.data))) {
			m.t.Fatalf("%s: content differs (%d bytes, want %d)", p, len(g.Data), len(n.data))
		}
		gx := map[string]string{}
		for k, v := range g.Xattrs {
			gx[k] = string(v)
		}
		if len(gx) != len(n.xattrs) || fmt.Sprint(gx) != fmt.Sprint(n.xattrs) && len(gx) > 0 {
			m.t.Fatalf("%s: xattrs %q, want %q", p, gx, n.xattrs)
		}
		if ino, ok := inoOf[n]; ok && ino != g.Ino {
			m.t.Fatalf("%s: inode %d, its hardlink has %d", p, g.Ino, ino)
		}
		inoOf[n] = g.Ino
	}
	for p := range got {
		if m.nodes[p] == nil {
			m.t.Fatalf("%s: in the image, not expected", p)
		}
	}
}

// stack opens committed layer files as one read-only image.
func stack(t testing.TB, paths []string) *lsmt.Image {
	t.Helper()
	var ls []*lsmt.Layer
	for _, p := range paths {
		f, err := layer.OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		ls = append(ls, f.Layer)
	}
	img, err := lsmt.NewImage(ls, nil)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// exportRaw writes the image's virtual disk to a sparse raw file.
func exportRaw(t testing.TB, img *lsmt.Image) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw.img")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(img.Size()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), img.Size()-off)
		if _, err := img.ReadAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
		if !allZero(buf[:n]) {
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
		}
	}
	return raw
}

// fsck exports the image to a sparse raw file and runs e2fsck -fn on it.
func fsck(t testing.TB, img *lsmt.Image) {
	t.Helper()
	bin := "/usr/sbin/e2fsck"
	if p, err := exec.LookPath("e2fsck"); err == nil {
		bin = p
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skip("e2fsck (e2fsprogs) is not installed")
	}
	raw := exportRaw(t, img)
	if out, err := exec.Command(bin, "-fn", raw).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
