package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/ext4"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// pageCacheRemote serves blobs from files in dir through an in-memory cache of 4 KiB
// pages, counting the bytes fetched from the files: a stand-in for registry + cache.
type pageCacheRemote struct {
	dir     string
	fetched atomic.Int64
}

type pageCacheBlob struct {
	f     *os.File
	size  int64
	n     *atomic.Int64
	mu    sync.Mutex
	pages map[int64][]byte
}

const testPage = 4096

func (r *pageCacheRemote) OpenBlob(_ context.Context, url string, _ config.Layer) (RemoteBlob, error) {
	f, err := os.Open(filepath.Join(r.dir, filepath.Base(url)))
	if err != nil {
		return nil, err
	}
	st, _ := f.Stat()
	return remoteOf(&pageCacheBlob{f: f, size: st.Size(), n: &r.fetched, pages: map[int64][]byte{}}), nil
}

func (b *pageCacheBlob) Size() int64  { return b.size }
func (b *pageCacheBlob) Close() error { return b.f.Close() }
func (b *pageCacheBlob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= b.size {
		return 0, io.EOF
	}
	done := 0
	for done < len(p) && off+int64(done) < b.size {
		pos := off + int64(done)
		pg := pos / testPage
		b.mu.Lock()
		data, ok := b.pages[pg]
		b.mu.Unlock()
		if !ok {
			data = make([]byte, min(testPage, b.size-pg*testPage))
			if _, err := b.f.ReadAt(data, pg*testPage); err != nil {
				return done, err
			}
			b.n.Add(int64(len(data)))
			b.mu.Lock()
			b.pages[pg] = data
			b.mu.Unlock()
		}
		done += copy(p[done:], data[pos-pg*testPage:])
	}
	if done < len(p) {
		return done, io.EOF
	}
	return done, nil
}

// ext4Layer makes an ext4 file system of src with mkfs.ext4 and commits it as a
// sealed LSMT layer at dst (only the non-zero blocks carry data).
func ext4Layer(t *testing.T, src, dst string) {
	t.Helper()
	bin, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("mkfs.ext4 not found (install e2fsprogs): cannot build the test file system")
	}
	raw := filepath.Join(t.TempDir(), "fs.img")
	if out, err := exec.Command(bin, "-q", "-F", "-E", "root_owner=0:0", "-d", src, raw, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	img, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data, _ := os.Create(filepath.Join(dir, "data"))
	index, _ := os.Create(filepath.Join(dir, "index"))
	w, err := lsmt.Create(data, index, lsmt.CreateOptions{VirtualSize: uint64(len(img))})
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, testPage)
	for off := 0; off < len(img); off += testPage {
		if blk := img[off : off+testPage]; !bytes.Equal(blk, zero) {
			if _, err := w.WriteAt(blk, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := lsmt.Commit(out, w.CommitSource(), lsmt.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	out.Close()
	w.Close()
}

// TestFileListReplay prefetches two files and a directory named by a file list;
// afterwards reading them through the image fetches nothing more, while the other
// files were not fetched.
func TestFileListReplay(t *testing.T) {
	src := t.TempDir()
	rnd := rand.New(rand.NewPCG(3, 4))
	want := map[string][]byte{}
	put := func(p string, n int) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755)
		if err := os.WriteFile(filepath.Join(src, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
		want[p] = b
	}
	put("etc/app.conf", 10_000)
	put("bin/tool", 300<<10)
	for i := 0; i < 5; i++ {
		put(fmt.Sprintf("lib/app/m%d.so", i), 50<<10+i)
		put(fmt.Sprintf("lib/app/sub/n%d.so", i), 20<<10+i)
	}
	put("big/other", 4<<20)
	put("big/data.bin", 8<<20)
	listed := []string{"etc/app.conf", "bin/tool"}
	for p := range want {
		if filepath.Dir(p) == "lib/app" || filepath.Dir(p) == "lib/app/sub" {
			listed = append(listed, p)
		}
	}
	blobs := t.TempDir()
	ext4Layer(t, src, filepath.Join(blobs, "fs.commit"))

	for _, how := range []string{"recordTracePath", "prefetch"} {
		t.Run(how, func(t *testing.T) {
			list := filepath.Join(t.TempDir(), "list")
			// The reference's file-list syntax, with a missing path, a comment-like
			// line and a directory walk.
			if err := os.WriteFile(list, []byte("/bin/tool\n  /etc/app.conf\n/lib/app/\n/no/such/file\n# not a path\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := &config.ImageConfig{RepoBlobURL: "https://example.invalid/v2/r/blobs", Lowers: []config.Layer{{Digest: "fs.commit"}}}
			opts := Options{}
			if how == "recordTracePath" {
				cfg.RecordTracePath = list
			} else {
				opts.ReplayTrace = list
			}
			core, logs := observer.New(zap.DebugLevel)
			rem := &pageCacheRemote{dir: blobs}
			opts.Remote, opts.Logger, opts.PrefetchConcurrency = rem, zap.New(core), 4
			im, err := Open(context.Background(), cfg, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			select {
			case <-im.TraceDone():
			case <-time.After(30 * time.Second):
				t.Fatal("file-list replay did not finish")
			}
			done := logs.FilterMessage("file list replayed").All()
			if len(done) != 1 {
				t.Fatalf("no \"file list replayed\" log line: %v", logs.All())
			}
			fields := done[0].ContextMap()
			if fields["files"] != int64(12) || fields["missing"] != int64(1) || fields["errors"] != int64(0) {
				t.Errorf("replay log %v: want 12 files, 1 missing, 0 errors", fields)
			}
			if logs.FilterMessage("file-list prefetch: no such path").Len() != 1 {
				t.Errorf("the missing path was not logged at debug level")
			}
			var listedBytes int64
			for _, p := range listed {
				listedBytes += int64(len(want[p]))
			}
			fetched := rem.fetched.Load()
			t.Logf("listed %d bytes in %d files, prefetch fetched %d bytes", listedBytes, len(listed), fetched)
			if fetched < listedBytes {
				t.Fatalf("prefetch fetched %d bytes, less than the %d listed", fetched, listedBytes)
			}
			// Bounded amplification: metadata and page rounding, not the 12 MiB of big/.
			if fetched > listedBytes+1<<20 {
				t.Errorf("prefetch fetched %d bytes for %d listed: other files were fetched", fetched, listedBytes)
			}

			// Reading the listed files through the image (lookup and data) fetches nothing.
			fsys, err := ext4.Open(im, im.Size())
			if err != nil {
				t.Fatal(err)
			}
			readAll := func(p string) []byte {
				in, err := fsys.Lookup("/" + p)
				if err != nil {
					t.Fatal(err)
				}
				exts, err := fsys.Extents(in)
				if err != nil {
					t.Fatal(err)
				}
				out := make([]byte, in.Size)
				for _, e := range exts {
					n := min(e.Length, in.Size-e.Logical)
					if _, err := im.ReadAt(out[e.Logical:e.Logical+n], e.Physical); err != nil {
						t.Fatal(err)
					}
				}
				return out
			}
			for _, p := range listed {
				if !bytes.Equal(readAll(p), want[p]) {
					t.Errorf("%s: wrong bytes through the image", p)
				}
			}
			if n := rem.fetched.Load() - fetched; n != 0 {
				t.Errorf("reading the listed files after the prefetch fetched %d bytes; want 0", n)
			}
			// An unlisted file was not prefetched.
			before := rem.fetched.Load()
			if !bytes.Equal(readAll("big/other"), want["big/other"]) {
				t.Error("big/other: wrong bytes")
			}
			if n := rem.fetched.Load() - before; n < 4<<20 {
				t.Errorf("reading the unlisted big/other fetched %d bytes: it was prefetched", n)
			}
		})
	}
}

type memDisk struct{ *bytes.Reader }

func (m memDisk) Size() int64 { return m.Reader.Size() }

// An erofs image is recognised and left alone (no ext4 error, nothing read).
func TestFileListErofs(t *testing.T) {
	b := make([]byte, 1<<20)
	copy(b[1024:], []byte{0xE2, 0xE1, 0xF5, 0xE0})
	fl := &trace.FileList{Entries: []trace.FileEntry{{Path: "/bin/sh"}}}
	if _, err := replayFileList(context.Background(), zap.NewNop(), memDisk{bytes.NewReader(b)}, fl, 2); !errors.Is(err, errErofs) {
		t.Fatalf("erofs image: %v", err)
	}
	b[1024] = 0 // neither erofs nor ext4
	if _, err := replayFileList(context.Background(), zap.NewNop(), memDisk{bytes.NewReader(b)}, fl, 2); err == nil || errors.Is(err, errErofs) {
		t.Fatalf("no file system: %v", err)
	}
}
