package ext4

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// newImage makes a sparse file with a fresh file system of size bytes.
func newImage(t testing.TB, size int64) (*os.File, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fs.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := Mkfs(f, size); err != nil {
		t.Fatal(err)
	}
	return f, p
}

// fsck runs e2fsck -fn on the image and fails the test on any finding.
func fsck(t testing.TB, path string) {
	t.Helper()
	bin, err := exec.LookPath("e2fsck")
	if err != nil {
		for _, p := range []string{"/usr/sbin/e2fsck", "/sbin/e2fsck"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		t.Skip("e2fsck (e2fsprogs) is not installed")
	}
	out, err := exec.Command(bin, "-fn", path).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

func TestMkfsFsck(t *testing.T) {
	for _, size := range []int64{MinMkfsSize, 200 << 20, 1 << 30, 3<<30 + 5<<20} {
		t.Run(fmt.Sprint(size>>20, "MiB"), func(t *testing.T) {
			f, p := newImage(t, size)
			fsck(t, p)
			r, err := Open(f, size)
			if err != nil {
				t.Fatal(err)
			}
			in, err := r.Lookup("/lost+found")
			if err != nil || !in.IsDir() {
				t.Fatalf("lost+found: %v", err)
			}
		})
	}
}

func TestWriterBasic(t *testing.T) {
	f, p := newImage(t, 256<<20)
	w, err := OpenWriter(f)
	if err != nil {
		t.Fatal(err)
	}
	d, err := w.Mkdir(RootIno, "etc", Attr{Mode: 0o755, Mtime: 1700000000})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("hello ext4\n"), 1000)
	if _, err := w.Create(d, "motd", Attr{Mode: ModeRegular | 0o644, UID: 1000, GID: 100000, Mtime: 1700000001, Xattrs: map[string][]byte{"user.a": []byte("1")}}, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Symlink(d, "short", "motd", Attr{Mode: 0o777}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x/", 100)
	if _, err := w.Symlink(d, "long", long, Attr{Mode: 0o777}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Create(d, "null", Attr{Mode: ModeChar | 0o666, Major: 1, Minor: 3}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	fsck(t, p)
	r, err := Open(f, 256<<20)
	if err != nil {
		t.Fatal(err)
	}
	in, err := r.Lookup("/etc/motd")
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadFile(in, 1<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("motd: %v", err)
	}
	st, _ := r.Stat(in.Num)
	if st.UID != 1000 || st.GID != 100000 || st.Mtime != 1700000001 {
		t.Fatalf("stat %+v", st)
	}
	xs, err := r.Xattrs(in.Num)
	if err != nil || string(xs["user.a"]) != "1" {
		t.Fatalf("xattrs %v %v", xs, err)
	}
	in, _ = r.Lookup("/etc/long")
	if s, err := r.Readlink(in); err != nil || s != long {
		t.Fatalf("long link %q %v", s, err)
	}
}

// With a tiny inode cache, inodes are written out and re-read between operations.
func TestWriterInodeEviction(t *testing.T) {
	old := inodeCacheLimit
	inodeCacheLimit = 8
	defer func() { inodeCacheLimit = old }()
	f, p := newImage(t, 64<<20)
	w, err := OpenWriter(f)
	if err != nil {
		t.Fatal(err)
	}
	d, err := w.Mkdir(RootIno, "d", Attr{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if _, err := w.Create(d, fmt.Sprint("f", i), Attr{Mode: ModeRegular | 0o644, Mtime: int64(i)}, strings.NewReader("data"), 4); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := w.Link(RootIno, fmt.Sprint("l", i), writerLookup(t, w, d, fmt.Sprint("f", i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 100; i += 4 {
		if err := w.Remove(d, fmt.Sprint("f", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	fsck(t, p)
	r, _ := Open(f, 64<<20)
	in, err := r.Lookup("/l8")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := r.Stat(in.Num)
	if st.Links != 1 || st.Mtime != 8 {
		t.Fatalf("/l8: %+v", st)
	}
}

func writerLookup(t *testing.T, w *Writer, dir uint32, name string) uint32 {
	ino, ok, err := w.Lookup(dir, name)
	if err != nil || !ok {
		t.Fatalf("%s: %v", name, err)
	}
	return ino
}
