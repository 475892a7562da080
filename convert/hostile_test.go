package convert

import (
	"archive/tar"
	"bytes"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obd-project/obd/ext4"
)

// memDevice is a sparse in-memory block device: unwritten blocks read as zeros.
type memDevice struct {
	mu     sync.Mutex
	blocks map[int64][]byte
	size   int64
}

func newMemDevice(size int64) *memDevice { return &memDevice{blocks: map[int64][]byte{}, size: size} }

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := 0; i < len(p); {
		blk, o := (off+int64(i))/4096, int((off+int64(i))%4096)
		n := min(len(p)-i, 4096-o)
		if b := d.blocks[blk]; b != nil {
			copy(p[i:i+n], b[o:])
		} else {
			clear(p[i : i+n])
		}
		i += n
	}
	return len(p), nil
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > d.size {
		panic("write outside the device")
	}
	for i := 0; i < len(p); {
		blk, o := (off+int64(i))/4096, int((off+int64(i))%4096)
		n := min(len(p)-i, 4096-o)
		b := d.blocks[blk]
		if b == nil {
			b = make([]byte, 4096)
			d.blocks[blk] = b
		}
		copy(b[o:], p[i:i+n])
		i += n
	}
	return len(p), nil
}

func applyTo(t testing.TB, dev *memDevice, data []byte) error {
	w, err := ext4.OpenWriter(dev)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ApplyTar(w, bytes.NewReader(data))
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

func freshDevice(t testing.TB) *memDevice {
	dev := newMemDevice(ext4.MinMkfsSize)
	if err := ext4.Mkfs(dev, dev.size); err != nil {
		t.Fatal(err)
	}
	return dev
}

func TestHostileArchives(t *testing.T) {
	deep := strings.Repeat("d/", 1100) + "f"
	cases := []struct {
		name string
		es   []entry
		want string // substring of the error
	}{
		{"dotdot", []entry{fileE("../etc/passwd", 0o644, []byte("x"))}, "leaves the root"},
		{"dotdot-inner", []entry{fileE("a/../../x", 0o644, []byte("x"))}, "leaves the root"},
		{"hardlink-missing", []entry{linkE("a", "nowhere", tar.TypeLink)}, "no such file"},
		{"hardlink-outside", []entry{linkE("a", "../../etc/shadow", tar.TypeLink)}, "leaves the root"},
		{"hardlink-dir", []entry{dirE("d/", 0o755, 1), linkE("a", "d", tar.TypeLink)}, "directory"},
		{"symlink-loop", []entry{linkE("a", "b", tar.TypeSymlink), linkE("b", "a", tar.TypeSymlink), fileE("a/x", 0o644, nil)}, "symlinks on the path"},
		{"deep", []entry{fileE(deep, 0o644, nil)}, "path components"},
		{"long-name", []entry{fileE(strings.Repeat("n", 256), 0o644, nil)}, "at most 255"},
		{"huge", []entry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 1 << 40, ModTime: time.Unix(1, 0)}}}, "does not fit"},
		{"truncated", []entry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 1 << 20, ModTime: time.Unix(1, 0)}}}, "EOF"},
		{"empty-whiteout", []entry{dirE("a/", 0o755, 1), fileE("a/.wh.", 0, nil)}, "whiteout of"},
		{"file-as-parent", []entry{fileE("f", 0o644, nil), fileE("f/x", 0o644, nil)}, "not a directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var data []byte
			if c.name == "huge" || c.name == "truncated" {
				// A header that promises more data than follows.
				var buf bytes.Buffer
				tw := tar.NewWriter(&buf)
				h := c.es[0].hdr
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatal(err)
				}
				tw.Write(make([]byte, 4096))
				data = buf.Bytes()
			} else {
				data = makeTar(t, c.es)
			}
			err := applyTo(t, freshDevice(t), data)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// A symlink pointing outside is followed inside the image only.
func TestSymlinkScopedToImage(t *testing.T) {
	dev := freshDevice(t)
	data := makeTar(t, []entry{
		linkE("escape", "/", tar.TypeSymlink),
		linkE("up", "../../../..", tar.TypeSymlink),
		fileE("escape/etc/one", 0o644, []byte("1")),
		fileE("up/etc/two", 0o644, []byte("2")),
		dirE("usr/lib/", 0o755, 1),
		linkE("lib", "usr/lib", tar.TypeSymlink),
		fileE("lib/libc.so", 0o644, []byte("libc")),
	})
	if err := applyTo(t, dev, data); err != nil {
		t.Fatal(err)
	}
	f, err := ext4.Open(dev, dev.size)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/etc/one", "/etc/two", "/usr/lib/libc.so"} {
		if _, err := f.Lookup(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func FuzzApplyTar(f *testing.F) {
	f.Add(makeTar(f, testLayers()[1]))
	f.Add(makeTar(f, []entry{linkE("a", "b", tar.TypeSymlink), fileE("a/x", 0o644, nil), linkE("h", "a/x", tar.TypeLink)}))
	f.Add(makeTar(f, []entry{dirE("d/", 0o755, 1), fileE("d/f", 0o644, []byte("x")), fileE("d/.wh..wh..opq", 0, nil), fileE(".wh.d", 0, nil)}))
	f.Fuzz(func(t *testing.T, data []byte) {
		dev := freshDevice(t)
		_ = applyTo(t, dev, data) // an error is fine; a panic or a write outside is not
		if _, err := ext4.OpenWriter(dev); err != nil {
			t.Fatalf("file system unreadable after a rejected archive: %v", err)
		}
	})
}

// Random byte changes to valid archives: an error or success, never a panic.
func TestMutatedArchives(t *testing.T) {
	seeds := [][]byte{makeTar(t, testLayers()[1]), makeTar(t, testLayers()[2])}
	r := rand.New(rand.NewPCG(1, 1))
	for i := range 400 {
		s := append([]byte{}, seeds[i%2]...)
		for range 1 + r.IntN(4) {
			s[r.IntN(len(s))] = byte(r.Uint32())
		}
		_ = applyTo(t, freshDevice(t), s)
	}
}

func TestLostFoundSurvivesWhiteouts(t *testing.T) {
	dev := freshDevice(t)
	if err := applyTo(t, dev, makeTar(t, []entry{fileE("a", 0o644, nil), fileE(".wh..wh..opq", 0, nil), fileE(".wh.lost+found", 0, nil)})); err != nil {
		t.Fatal(err)
	}
	f, err := ext4.Open(dev, dev.size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Lookup("/lost+found"); err != nil {
		t.Fatal(err)
	}
}

// A directory removed after its entry (and its inode reused) must not get the
// directory's time at the end of the layer.
func TestDirTimeAfterRemoval(t *testing.T) {
	dev := freshDevice(t)
	if err := applyTo(t, dev, makeTar(t, []entry{
		dirE("d/", 0o755, 777), fileE(".wh.d", 0, nil), // not created-then-hidden: the same-layer rule keeps d
		dirE("e/", 0o755, 888), fileE("e", 0o644, []byte("file now")),
	})); err != nil {
		t.Fatal(err)
	}
	f, _ := ext4.Open(dev, dev.size)
	in, err := f.Lookup("/e")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat(in.Num)
	if st.Mode&0xF000 != ext4.ModeRegular || st.Mtime != 1000 {
		t.Fatalf("/e: %+v (a file with the entry's mtime 1000 expected)", st)
	}
	for num := uint32(12); num < 64; num++ { // freed inodes stay zero
		if st, err := f.Stat(num); err == nil && st.Mode == 0 && st.Mtime != 0 {
			t.Fatalf("free inode %d has mtime %d", num, st.Mtime)
		}
	}
}
