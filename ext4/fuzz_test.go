package ext4

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"testing"
)

func gunzipFile(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The seeds are 200 KiB file systems made by
//
//	mkfs.ext4 -t ext4 -b 1024 -N 32 -O ^has_journal,^resize_inode -d SRC small-ext4.img 200K
//	mkfs.ext4 -t ext2 -b 1024 -N 32 -d SRC small-ext2.img 200K
//
// with SRC holding a/b/c/f (6 B), a/g (5000 B), frag (8 runs with holes), l -> a/g.
func seeds(t testing.TB) [][]byte {
	return [][]byte{gunzipFile(t, "testdata/small-ext4.img.gz"), gunzipFile(t, "testdata/small-ext2.img.gz")}
}

func TestSeedsRead(t *testing.T) {
	for _, img := range seeds(t) {
		f, err := Open(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			t.Fatal(err)
		}
		in := mustLookup(t, f, "/a/b/c/f")
		if got := readFile(t, f, bytes.NewReader(img), in); string(got) != "hello\n" {
			t.Errorf("/a/b/c/f: %q", got)
		}
		fr := mustLookup(t, f, "/frag")
		exts, err := f.Extents(fr)
		if err != nil || len(exts) != 8 {
			t.Errorf("/frag: %d extents, %v; want 8", len(exts), err)
		}
	}
}

// FuzzOpen walks whatever file system the input holds and maps every file: errors are
// fine, panics, hangs and extents outside the image are not.
func FuzzOpen(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		fsys, err := Open(r, int64(len(data)))
		if err != nil {
			return
		}
		fsys.Lookup("/a/b/c/f")
		root, err := fsys.Lookup("/")
		if err != nil || !root.IsDir() {
			return
		}
		fsys.Walk(root, "/", func(p string, in *Inode) error {
			exts, err := fsys.Extents(in)
			if err != nil {
				return nil
			}
			for _, e := range exts {
				if e.Physical < 0 || e.Length <= 0 || e.Physical+e.Length > int64(len(data)) {
					t.Fatalf("%s: extent %+v outside the %d-byte image", p, e, len(data))
				}
			}
			return nil
		})
	})
}

// hostileFS is a 1 KiB-block file system over buf with no superblock checks, for
// feeding the mapper crafted trees.
func hostileFS(buf []byte) *FS {
	return &FS{r: bytes.NewReader(buf), blockSize: 1024, blocks: uint64(len(buf) / 1024), firstData: 1,
		blocksPerGr: 8192, inodesPerGr: 8, inodes: 8, inodeSize: 128, descSize: 32, groups: 1}
}

func extentHeader(b []byte, entries, max, depth int) {
	b[0], b[1] = 0x0A, 0xF3
	b[2], b[4], b[6] = byte(entries), byte(max), byte(depth)
}

func TestHostileExtentTrees(t *testing.T) {
	buf := make([]byte, 64<<10)
	// Block 5: an index node of depth 1 whose child is block 5 itself.
	n := buf[5*1024:]
	extentHeader(n, 1, 84, 1)
	n[16] = 5 // ei_leaf_lo
	in := &Inode{Num: 12, Mode: modeRegular, Size: 1 << 30, Flags: flagExtents}
	extentHeader(in.block[:], 1, 4, 2)
	in.block[16] = 5
	f := hostileFS(buf)
	if _, err := f.Extents(in); err == nil || !bytes.Contains([]byte(err.Error()), []byte("depth")) {
		t.Errorf("self-referencing extent node: %v", err)
	}
	// Depth 5 with 84 entries per node all pointing at the same node: bounded by
	// maxMetaBlocks, not 84^5 reads.
	for d := 1; d <= 4; d++ {
		n := buf[d*1024:]
		extentHeader(n, 84, 84, d)
		for i := 0; i < 84; i++ {
			n[12+12*i+4] = byte(d - 1) // every child is the node one level down
			if d == 1 {
				n[12+12*i+4] = 10 // an empty leaf
			}
		}
	}
	extentHeader(buf[10*1024:], 0, 84, 0)
	extentHeader(in.block[:], 1, 4, 5)
	in.block[16] = 4
	if _, err := f.Extents(in); err == nil {
		t.Error("an extent tree of 84^4 node reads was walked to the end")
	}
	// An uninitialized extent is skipped; data outside the file system is an error.
	extentHeader(in.block[:], 2, 4, 0)
	le := in.block[12:]
	le[4], le[5], le[8] = 0x02, 0x80, 20 // 2 uninitialized blocks at block 20
	le = in.block[24:]
	le[0], le[4], le[8], le[11] = 2, 1, 0, 1 // 1 block at physical 1<<24
	if _, err := f.Extents(in); err == nil {
		t.Error("an extent outside the file system was accepted")
	}
	le[11] = 0
	le[8] = 30
	if exts, err := f.Extents(in); err != nil || len(exts) != 1 || exts[0].Logical != 2048 || exts[0].Physical != 30*1024 {
		t.Errorf("uninitialized + initialized extent: %+v, %v", exts, err)
	}
}

func TestHostileDirectory(t *testing.T) {
	buf := make([]byte, 64<<10)
	f := hostileFS(buf)
	dir := &Inode{Num: 2, Mode: modeDir, Size: 1024, Flags: flagExtents}
	extentHeader(dir.block[:], 1, 4, 0)
	dir.block[16], dir.block[20] = 1, 7 // 1 block at block 7
	// Block 7: a zero record length would loop forever if accepted.
	buf[7*1024] = 11
	if _, err := f.ReadDir(dir); err == nil {
		t.Error("record length 0 accepted")
	}
	buf[7*1024+4], buf[7*1024+5], buf[7*1024+6] = 0x00, 0x04, 250 // rec_len 1024, name_len 250
	if ents, err := f.ReadDir(dir); err != nil || len(ents) != 1 {
		t.Errorf("one entry: %v, %v", ents, err)
	}
	buf[7*1024+4], buf[7*1024+5] = 0x00, 0x08 // rec_len 2048 > block
	if _, err := f.ReadDir(dir); err == nil {
		t.Error("record past the block accepted")
	}
}
