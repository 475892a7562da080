package convert

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"testing"

	"golang.org/x/sys/unix"
)

// The Linux kernel reads what the converter wrote: the image's ext4, loop-mounted
// read-only, shows the model's tree (type, mode, owner, size, content, link target,
// device numbers, xattrs, hardlink identity, mtime, link count).
func TestKernelMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop-mounting needs root")
	}
	b, err := NewBuilder(Options{WorkDir: t.TempDir(), VSize: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m := newModel(t)
	var paths []string
	for _, es := range testLayers() {
		l, err := b.AddLayer(bytes.NewReader(makeTar(t, es)), "")
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, l.Path)
		m.apply(es)
	}
	raw := exportRaw(t, stack(t, paths))
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "loop,ro", raw, mnt).CombinedOutput(); err != nil {
		t.Skipf("loop mount not available here: %v %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()

	names := map[*node]int{}
	subdirs := map[string]int{"/": 1}
	for p, n := range m.nodes {
		names[n]++
		if n.typ == tar.TypeDir && p != "/" {
			subdirs[path.Dir(p)]++
		}
	}
	var ps []string
	for p := range m.nodes {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	ino := map[*node]uint64{}
	kinds := map[byte]uint32{tar.TypeDir: unix.S_IFDIR, tar.TypeReg: unix.S_IFREG, tar.TypeLink: unix.S_IFREG, tar.TypeSymlink: unix.S_IFLNK,
		tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}
	for _, p := range ps {
		n := m.nodes[p]
		full := filepath.Join(mnt, p)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		links := names[n]
		if n.typ == tar.TypeDir {
			links = 2 + subdirs[p]
		}
		if st.Mode&unix.S_IFMT != kinds[n.typ] || int64(st.Mode&0o7777) != n.mode || int(st.Uid) != n.uid || int(st.Gid) != n.gid || int(st.Nlink) != links {
			t.Fatalf("%s: kernel says mode %o uid %d gid %d nlink %d; want type %c mode %o uid %d gid %d nlink %d",
				p, st.Mode, st.Uid, st.Gid, st.Nlink, n.typ, n.mode, n.uid, n.gid, links)
		}
		if p != "/" && (st.Mtim.Sec != n.mtime.Unix() || st.Mtim.Nsec != int64(n.mtime.Nanosecond())) {
			t.Fatalf("%s: kernel mtime %d.%09d, want %v", p, st.Mtim.Sec, st.Mtim.Nsec, n.mtime)
		}
		switch n.typ {
		case tar.TypeReg, tar.TypeLink:
			got, err := os.ReadFile(full)
			if err != nil || !bytes.Equal(got, n.data) {
				t.Fatalf("%s: content differs (%d bytes, want %d): %v", p, len(got), len(n.data), err)
			}
		case tar.TypeSymlink:
			if got, err := os.Readlink(full); err != nil || got != n.target {
				t.Fatalf("%s: link %q, want %q (%v)", p, got, n.target, err)
			}
		case tar.TypeChar, tar.TypeBlock:
			if int64(unix.Major(st.Rdev)) != n.major || int64(unix.Minor(st.Rdev)) != n.minor {
				t.Fatalf("%s: device %d:%d, want %d:%d", p, unix.Major(st.Rdev), unix.Minor(st.Rdev), n.major, n.minor)
			}
		}
		for k, v := range n.xattrs {
			buf := make([]byte, 4096)
			sz, err := unix.Lgetxattr(full, k, buf)
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODATA) && k[:5] == "user." && n.typ != tar.TypeReg && n.typ != tar.TypeDir {
				continue
			}
			if err != nil || string(buf[:sz]) != v {
				t.Fatalf("%s: xattr %s = %q (%v), want %q", p, k, buf[:max(sz, 0)], err, v)
			}
		}
		if prev, ok := ino[n]; ok && prev != st.Ino {
			t.Fatalf("%s: inode %d, its hardlink has %d", p, st.Ino, prev)
		}
		ino[n] = st.Ino
	}
	// Nothing more than the model (and lost+found) is there.
	count := 0
	filepath.Walk(mnt, func(string, os.FileInfo, error) error { count++; return nil })
	if want := len(m.nodes) + 1; count != want {
		t.Fatalf("kernel sees %d paths, want %d", count, want)
	}
}
