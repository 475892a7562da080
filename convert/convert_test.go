package convert

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func randData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// testLayers exercise every case of the OCI layer semantics.
func testLayers() [][]entry {
	capXattr := string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	longName := strings.Repeat("n", 255)
	longPath := strings.Repeat("deep-directory-name/", 30) + "leaf"
	l1 := []entry{
		dirE("etc/", 0o755, 100),
		fileE("etc/passwd", 0o644, []byte("root:x:0:0::/root:/bin/sh\n")),
		dirE("bin/", 0o755, 101),
		fileE("bin/sh", 0o755, randData(1, 5<<20+123)),
		linkE("bin/sh-link", "bin/sh", tar.TypeLink),
		linkE("bin/short", "sh", tar.TypeSymlink),
		linkE("bin/long", "/"+strings.Repeat("x", 300), tar.TypeSymlink),
		linkE("bin/abs", "/etc/passwd", tar.TypeSymlink),
		dirE("usr/", 0o755, 102),
		dirE("usr/bin/", 0o755, 103),
		fileE("usr/bin/sudo", 0o4755, []byte("sudo")),
		fileE("usr/bin/wall", 0o2755, []byte("wall")),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/ping", Mode: 0o755, Size: 4, ModTime: time.Unix(1000, 5000),
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capXattr, "SCHILY.xattr.user.note": "hi"}}, data: []byte("ping")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/bigx", Mode: 0o755, ModTime: time.Unix(1000, 0),
			PAXRecords: map[string]string{"SCHILY.xattr.user.big": strings.Repeat("v", 2000)}}},
		dirE("tmp/", 0o1777, 104),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "home/user/", Mode: 0o700, Uid: 1000, Gid: 1000, ModTime: time.Unix(105, 0)}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "home/user/.profile", Mode: 0o600, Uid: 1000, Gid: 100000, Size: 3, ModTime: time.Unix(1000, 0)}, data: []byte("x=1")},
		dirE("dev/", 0o755, 106),
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: time.Unix(1, 0)}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0, ModTime: time.Unix(1, 0)}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/big", Mode: 0o660, Devmajor: 259, Devminor: 70000, ModTime: time.Unix(1, 0)}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/initctl", Mode: 0o600, ModTime: time.Unix(1, 0)}},
		dirE("opq/", 0o755, 107),
		fileE("opq/a", 0o644, []byte("a")),
		dirE("opq/sub/", 0o755, 108),
		fileE("opq/sub/c", 0o644, []byte("c")),
		dirE("gone/", 0o755, 109),
		fileE("gone/x", 0o644, []byte("x")),
		linkE("gone/x-link", "bin/sh", tar.TypeLink),
		dirE("replace-dir/", 0o755, 110),
		fileE("replace-dir/child", 0o644, []byte("child")),
		fileE("replace-file", 0o644, []byte("file")),
		fileE("etc/"+longName, 0o644, []byte("long name")),
		fileE(longPath, 0o644, []byte("long path")),
		fileE("implicit/parent/file", 0o644, []byte("no parent entries")),
		fileE("empty", 0o644, nil),
		fileE("holes", 0o644, append(make([]byte, 1<<20), randData(2, 100)...)),
	}
	for i := range 300 {
		l1 = append(l1, fileE(fmt.Sprintf("many/f%04d", i), 0o644, randData(uint64(i), i*37)))
	}
	l2 := []entry{
		fileE(".wh.gone", 0, nil),
		dirE("opq/", 0o755, 200),
		fileE("opq/new-before", 0o644, []byte("kept: created earlier in this layer")),
		fileE("opq/.wh..wh..opq", 0, nil),
		fileE("opq/new-after", 0o644, []byte("after")),
		fileE("replace-dir", 0o644, []byte("now a file")),
		dirE("replace-file/", 0o750, 201),
		fileE("replace-file/inner", 0o644, []byte("inner")),
		linkE("bin/sh2", "bin/sh", tar.TypeLink),
		fileE("etc/passwd", 0o600, []byte("root:x:0:0::/root:/bin/bash\n")),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o750, Uid: 1, Gid: 2, ModTime: time.Unix(202, 0),
			PAXRecords: map[string]string{"SCHILY.xattr.user.dir": "d"}}},
		dirE("w/", 0o755, 203),
		fileE("w/k", 0o644, []byte("kept")),
		fileE("w/.wh.k", 0, nil),
		fileE("many/.wh.f0001", 0, nil),
		fileE("usr/bin/sudo", 0o4711, []byte("new sudo")),
	}
	l3 := []entry{
		fileE("bin/.wh.sh", 0, nil),
		fileE("usr/.wh.bin", 0, nil),
		fileE("home/.wh..wh..opq", 0, nil),
		fileE(".wh.many", 0, nil),
		dirE("many/", 0o700, 300),
		fileE("many/again", 0o644, []byte("again")),
		fileE("replace-dir", 0o644, []byte("file over file")),
	}
	return [][]entry{l1, l2, l3}
}

func TestConvertLayers(t *testing.T) {
	layers := testLayers()
	b, err := NewBuilder(Options{WorkDir: t.TempDir(), VSize: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m := newModel(t)
	var paths []string
	for i, es := range layers {
		l, err := b.AddLayer(bytes.NewReader(makeTar(t, es)), "")
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		t.Logf("layer %d: %d entries, %d bytes of changed blocks, blob %d bytes", i, l.Stats.Entries, l.ChangedBytes, l.Size)
		paths = append(paths, l.Path)
		m.apply(es)
		img := stack(t, paths)
		m.check(img, img.Size())
		fsck(t, img)
	}
	// A layer stores only what it changed: layer 2 rewrote a few files and directories.
	if got := b.Layers()[2].ChangedBytes; got > 1<<20 {
		t.Errorf("layer 2 stores %d bytes of changed blocks, want < 1 MiB", got)
	}
}

func TestConvertReproducible(t *testing.T) {
	var digests [2][]string
	for run := range 2 {
		b, err := NewBuilder(Options{WorkDir: t.TempDir(), VSize: 256 << 20})
		if err != nil {
			t.Fatal(err)
		}
		for _, es := range testLayers() {
			l, err := b.AddLayer(bytes.NewReader(makeTar(t, es)), "")
			if err != nil {
				t.Fatal(err)
			}
			digests[run] = append(digests[run], l.Digest)
		}
		b.Close()
	}
	if fmt.Sprint(digests[0]) != fmt.Sprint(digests[1]) {
		t.Fatalf("two conversions differ:\n%v\n%v", digests[0], digests[1])
	}
}

// A layer adding one 5 MiB file and a few entries stores about 5 MiB, not a copy
// of the file system or of the block groups it touches.
func TestLayerStoresOnlyChanges(t *testing.T) {
	b, err := NewBuilder(Options{WorkDir: t.TempDir()}) // the default 64 GiB
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.AddLayer(bytes.NewReader(makeTar(t, testLayers()[0])), ""); err != nil {
		t.Fatal(err)
	}
	l, err := b.AddLayer(bytes.NewReader(makeTar(t, []entry{
		fileE("opt/app/big", 0o755, randData(9, 5<<20)),
		fileE("etc/app.conf", 0o644, []byte("x=1")),
		linkE("usr/bin/app", "/opt/app/big", tar.TypeSymlink),
	})), "")
	if err != nil {
		t.Fatal(err)
	}
	if l.ChangedBytes < 5<<20 || l.ChangedBytes > 5<<20+256<<10 {
		t.Fatalf("layer stores %d bytes of blocks, want 5 MiB + at most 256 KiB of metadata", l.ChangedBytes)
	}
	t.Logf("5 MiB layer: %d bytes of blocks, blob %d bytes", l.ChangedBytes, l.Size)
}
