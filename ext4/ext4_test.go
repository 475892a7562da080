package ext4

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
)

const golden = "../testdata/golden/"

// readFile rebuilds a file's bytes from its extents, as prefetch would read them.
func readFile(t *testing.T, f *FS, r io.ReaderAt, in *Inode) []byte {
	t.Helper()
	exts, err := f.Extents(in)
	if err != nil {
		t.Fatalf("inode %d: %v", in.Num, err)
	}
	out := make([]byte, in.Size)
	var last int64
	for i, e := range exts {
		if e.Logical < last || e.Length <= 0 || e.Length%f.BlockSize() != 0 {
			t.Fatalf("inode %d: extent %d %+v out of order or not whole blocks", in.Num, i, e)
		}
		last = e.Logical + e.Length
		if e.Logical >= in.Size {
			t.Fatalf("inode %d: extent %+v past the size %d", in.Num, e, in.Size)
		}
		n := min(e.Length, in.Size-e.Logical)
		if _, err := r.ReadAt(out[e.Logical:e.Logical+n], e.Physical); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func shaHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// tree is what a test puts in a file system: path -> contents (nil for a directory).
type tree map[string][]byte

func makeTree(t *testing.T) (string, tree, string) {
	dir := t.TempDir()
	want := tree{}
	rnd := rand.New(rand.NewPCG(1, 2))
	add := func(p string, n int) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, b, 0o644); err != nil {
			t.Fatal(err)
		}
		want[p] = b
	}
	for _, n := range []int{0, 1, 59, 61, 1023, 1024, 4095, 4096, 4097, 65537, 300 << 10, 3<<20 + 7} {
		add(fmt.Sprintf("sizes/f%d", n), n)
	}
	deep := "deep"
	for i := 0; i < 20; i++ {
		deep = filepath.Join(deep, fmt.Sprintf("d%02d", i))
	}
	add(filepath.Join(deep, "leaf.txt"), 5000)
	for i := 0; i < 1500; i++ { // enough names for a hashed (htree) directory
		add(fmt.Sprintf("many/file-with-a-long-name-%05d", i), i%7)
	}
	// Sparse: data, a 6 MiB hole, data.
	sp := filepath.Join(dir, "sparse.bin")
	f, err := os.Create(sp)
	if err != nil {
		t.Fatal(err)
	}
	b := bytes.Repeat([]byte("sparse!"), 1000)
	f.WriteAt(b, 0)
	f.WriteAt(b, 6<<20+100)
	f.Close()
	sb := make([]byte, 6<<20+100+len(b))
	copy(sb, b)
	copy(sb[6<<20+100:], b)
	want["sparse.bin"] = sb
	// Fragmented: 200 runs with holes between them need an extent tree of depth > 0.
	fr, err := os.Create(filepath.Join(dir, "fragmented.bin"))
	if err != nil {
		t.Fatal(err)
	}
	fb := make([]byte, 200*64<<10)
	for i := 0; i < 200; i++ {
		chunk := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		fr.WriteAt(chunk, int64(i)*64<<10)
		copy(fb[i*64<<10:], chunk)
	}
	fr.Close()
	want["fragmented.bin"] = fb[:199*64<<10+4096]
	if err := os.Symlink("sizes/f1", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir, want, deep
}

func mkfs(t *testing.T, src string, size string, opts ...string) string {
	t.Helper()
	bin, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("mkfs.ext4 not found (install e2fsprogs): cannot build test file systems")
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	args := append([]string{"-q", "-F", "-E", "root_owner=0:0", "-d", src}, opts...)
	args = append(args, img, size)
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %v: %v\n%s", args, err, out)
	}
	return img
}

// TestMkfsImages reads every file of images made by mkfs.ext4 -d with several
// layouts back through the computed extents and checks the bytes.
func TestMkfsImages(t *testing.T) {
	src, want, deep := makeTree(t)
	for _, c := range []struct {
		name string
		size string
		opts []string
	}{
		{"default", "64M", nil},
		{"1k-blocks", "64M", []string{"-b", "1024"}},
		{"64k-blocks", "256M", []string{"-b", "65536"}},
		{"blockmap-ext2", "64M", []string{"-t", "ext2"}},
		{"blockmap-1k-ext3", "64M", []string{"-t", "ext3", "-b", "1024"}},
		// Small groups and few inodes per group put most inodes past the first
		// meta group, whose descriptors live elsewhere.
		{"meta_bg-32bit", "64M", []string{"-O", "meta_bg,^resize_inode,^64bit,^flex_bg", "-b", "1024", "-g", "1024", "-N", "2048"}},
		{"meta_bg-64bit", "64M", []string{"-O", "meta_bg,^resize_inode,64bit,^flex_bg", "-b", "1024", "-g", "1024", "-N", "2048"}},
		{"small-inodes", "64M", []string{"-I", "128"}},
		{"inline_data", "64M", []string{"-O", "inline_data"}},
		{"metadata_csum-off", "64M", []string{"-O", "^metadata_csum,^dir_index"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := mkfs(t, src, c.size, c.opts...)
			r, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			st, _ := r.Stat()
			f, err := Open(r, st.Size())
			if err != nil {
				t.Fatal(err)
			}
			for p, b := range want {
				in, err := f.Lookup("/" + p)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if !in.IsRegular() || in.Size != int64(len(b)) {
					t.Fatalf("%s: mode %#o size %d, want a regular file of %d", p, in.Mode, in.Size, len(b))
				}
				if in.Inline() {
					continue // the bytes are in the inode: nothing to prefetch
				}
				if got := readFile(t, f, r, in); !bytes.Equal(got, b) {
					t.Fatalf("%s: bytes read through the extents differ", p)
				}
			}
			if j := f.JournalInode(); j != 0 {
				jin, err := f.Inode(j)
				if err != nil {
					t.Fatal(err)
				}
				exts, err := f.Extents(jin)
				if err != nil || len(exts) == 0 {
					t.Fatalf("journal inode %d: %v, %v", j, exts, err)
				}
				magic := make([]byte, 4)
				r.ReadAt(magic, exts[0].Physical)
				if !bytes.Equal(magic, []byte{0xC0, 0x3B, 0x39, 0x98}) {
					t.Errorf("journal's first block starts with % x, not the jbd2 magic", magic)
				}
			} else if c.name == "default" {
				t.Error("no journal found in a default ext4")
			}
			sp, _ := f.Lookup("/sparse.bin")
			exts, _ := f.Extents(sp)
			var mapped int64
			for _, e := range exts {
				mapped += e.Length
			}
			if mapped > 1<<20 {
				t.Errorf("sparse.bin: %d bytes mapped, the hole was not skipped", mapped)
			}
			// A walk of the root finds every file and directory.
			var got []string
			err = f.Walk(mustLookup(t, f, "/"), "/", func(p string, in *Inode) error {
				if in.IsRegular() {
					got = append(got, strings.TrimPrefix(p, "/"))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for p := range want {
				names = append(names, p)
			}
			sort.Strings(names)
			sort.Strings(got)
			if strings.Join(got, "\n") != strings.Join(names, "\n") {
				t.Errorf("walk found %d regular files, want %d", len(got), len(names))
			}
			if _, err := f.Lookup("/" + deep + "/missing"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("missing name: %v, want fs.ErrNotExist", err)
			}
			if _, err := f.Lookup("/sizes/f1/x"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("path through a file: %v, want fs.ErrNotExist", err)
			}
			if _, err := f.Lookup("/link/x"); err == nil || !strings.Contains(err.Error(), "symlink") {
				t.Errorf("path through a symlink: %v", err)
			}
			if in, err := f.Lookup("/link"); err != nil || !in.IsSymlink() {
				t.Errorf("/link: %v", err)
			}
		})
	}
}

func mustLookup(t *testing.T, f *FS, p string) *Inode {
	t.Helper()
	in, err := f.Lookup(p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return in
}

func goldenLayer(t *testing.T, name string, b []byte) *lsmt.Layer {
	t.Helper()
	l, _, err := layer.Open(bytes.NewReader(b), int64(len(b)), name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(golden + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGoldenHelloWorld finds /hello in the converted hello-world image stacked on
// the ext4_64 base layer, as the snapshotter stacks them.
func TestGoldenHelloWorld(t *testing.T) {
	gz, err := gzip.NewReader(bytes.NewReader(readGolden(t, "ext4_64.tar.gz")))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var base []byte
	for base == nil {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("ext4_64 not found: %v", err)
		}
		if h.Name == "ext4_64" {
			if base, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	hello := readGolden(t, "hello-world-oci/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d")
	im, err := lsmt.NewImage([]*lsmt.Layer{goldenLayer(t, "ext4_64", base), goldenLayer(t, "hello", hello)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(im, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	in := mustLookup(t, f, "/hello")
	if in.Size != 13256 {
		t.Fatalf("/hello size %d", in.Size)
	}
	exts, err := f.Extents(in)
	if err != nil || len(exts) == 0 || exts[0].Physical != 12416*512 {
		t.Fatalf("/hello extents %+v, %v; want data at sector 12416", exts, err)
	}
	if got := shaHex(readFile(t, f, im, in)); got != "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014" {
		t.Errorf("/hello sha256 %s", got)
	}
	// The base layer alone is an empty file system.
	only, _ := lsmt.NewImage([]*lsmt.Layer{goldenLayer(t, "ext4_64", base)}, nil)
	fb, err := Open(only, only.Size())
	if err != nil {
		t.Fatal(err)
	}
	if fb.JournalInode() != 8 {
		t.Errorf("the base layer's journal inode is %d, want 8", fb.JournalInode())
	}
	if _, err := fb.Lookup("/hello"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/hello in the base layer: %v", err)
	}
}

// TestGoldenReferenceApply reads the ext4 layers the reference's overlaybd-apply
// made (d_ext4: d0, and d1 on top) against their expected trees.
func TestGoldenReferenceApply(t *testing.T) {
	d0 := readGolden(t, "reference/d_ext4/d0.commit")
	d1 := readGolden(t, "reference/d_ext4/d1.commit")
	for _, c := range []struct {
		tree   string
		layers []*lsmt.Layer
	}{
		{"expected-tree-d0.txt", []*lsmt.Layer{goldenLayer(t, "d0", d0)}},
		{"expected-tree-d01.txt", []*lsmt.Layer{goldenLayer(t, "d0", d0), goldenLayer(t, "d1", d1)}},
	} {
		t.Run(c.tree, func(t *testing.T) {
			im, err := lsmt.NewImage(c.layers, nil)
			if err != nil {
				t.Fatal(err)
			}
			f, err := Open(im, im.Size())
			if err != nil {
				t.Fatal(err)
			}
			walked := map[string]*Inode{}
			if err := f.Walk(mustLookup(t, f, "/"), "/", func(p string, in *Inode) error {
				walked["."+p] = in
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(readGolden(t, "reference/d_ext4/"+c.tree))), "\n")
			for _, l := range lines {
				fields := strings.Split(l, " | ")
				p, kind, sum := fields[0], fields[1], fields[3]
				in := walked[p]
				if in == nil {
					t.Errorf("%s: not found by the walk", p)
					continue
				}
				delete(walked, p)
				switch kind {
				case "directory":
					if !in.IsDir() {
						t.Errorf("%s: not a directory", p)
					}
				case "symbolic link":
					if !in.IsSymlink() {
						t.Errorf("%s: not a symlink", p)
					}
				default:
					if got := shaHex(readFile(t, f, im, in)); !in.IsRegular() || got[:16] != sum {
						t.Errorf("%s: sha256 %s, want %s…", p, got[:16], sum)
					}
				}
			}
			for p := range walked {
				t.Errorf("%s: found by the walk, not in %s", p, c.tree)
			}
		})
	}
}
