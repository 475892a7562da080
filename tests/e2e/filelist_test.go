package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// `obd attach --prefetch LIST` with a file list (not a binary trace): the listed files
// and the walked directory are fetched on a cold cache, the other files are not, and
// mounting and reading the listed files afterwards fetches nothing from the registry.
func TestRuntimeFileListPrefetch(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	rng := rand.NewChaCha8([32]byte{9})
	sums := map[string]string{}
	put := func(name string, n int) {
		b := make([]byte, n)
		rng.Read(b)
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		sums[name] = hex.EncodeToString(s[:])
	}
	put("app/bin/tool", 2<<20)
	put("etc/app.conf", 3000)
	var listed []string
	for i := 0; i < 4; i++ {
		put(fmt.Sprintf("app/lib/m%d.so", i), 1<<20+i)
		put(fmt.Sprintf("app/lib/sub/s%d.so", i), 100<<10)
	}
	for i := 0; i < 6; i++ {
		put(fmt.Sprintf("other/data%d", i), 4<<20)
	}
	var listedBytes int64
	for name := range sums {
		if !strings.HasPrefix(name, "other/") {
			listed = append(listed, name)
			st, _ := os.Stat(filepath.Join(root, name))
			listedBytes += st.Size()
		}
	}
	raw := filepath.Join(dir, "disk.raw")
	mustRun(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, raw, "128M")
	layerPath := filepath.Join(dir, "layer.tar")
	mustRun(t, bin("obd"), "-q", "import", "--compress", "lz4", "--tar", raw, layerPath)
	blob, err := os.ReadFile(layerPath)
	if err != nil {
		t.Fatal(err)
	}
	reg := registrytest.New(t)
	reg.PushImage(t, "app", "v1", registrytest.LayersImage(t, blob))
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/app:v1"

	list := filepath.Join(dir, "files.list")
	if err := os.WriteFile(list, []byte("/app/bin/tool\n/etc/app.conf\n/app/lib/\n/not/there\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	a := startFG(t, "--frontend", "fuse", "--global-config", "/nonexistent", "--run-dir", filepath.Join(dir, "run"),
		"--cache-dir", filepath.Join(dir, "cache"), "--prefetch", list, ref)
	a.waitLog(t, "file list replayed")
	if !strings.Contains(a.log(), `"files": 10`) || !strings.Contains(a.log(), `"missing": 1`) {
		t.Errorf("the replay log does not report 10 files and 1 missing path:\n%s", a.log())
	}
	// The cache's read-ahead may still be in flight when the replay's reads return:
	// count once the registry traffic has settled.
	fetched := proxy.BlobBytes()
	for stable := 0; stable < 5; {
		time.Sleep(200 * time.Millisecond)
		if n := proxy.BlobBytes(); n != fetched {
			fetched, stable = n, 0
		} else {
			stable++
		}
	}
	t.Logf("listed %d bytes in %d files; attach and prefetch fetched %d of %d blob bytes", listedBytes, len(listed), fetched, len(blob))
	if fetched < listedBytes {
		t.Errorf("prefetch fetched %d blob bytes, less than the %d bytes listed", fetched, listedBytes)
	}
	// The 24 MiB under other/ were not fetched (read-ahead may overshoot a little).
	if fetched > listedBytes+8<<20 {
		t.Errorf("prefetch fetched %d blob bytes for %d bytes listed: unlisted files were fetched", fetched, listedBytes)
	}
	// mount(8) probes the device (libblkid reads its first MiBs and its end, looking
	// for other formats' magics): reads no file list names, which may fetch a little.
	// The listed files then fetch nothing.
	// A direct-I/O loop device: the page cache of the device file would read ahead
	// past a listed file's end into its unlisted neighbours.
	loop := strings.TrimSpace(mustRun(t, "losetup", "--direct-io=on", "-r", "-f", "--show", a.path))
	mustRun(t, "mount", "-t", "ext4", "-o", "ro", loop, mnt)
	mounted := proxy.BlobBytes()
	for _, name := range listed {
		if got := fileSHA(t, filepath.Join(mnt, name)); got != sums[name] {
			t.Errorf("%s: sha256 %s, want %s", name, got, sums[name])
		}
	}
	t.Logf("mount fetched %d blob bytes, reading the listed files %d", mounted-fetched, proxy.BlobBytes()-mounted)
	if n := proxy.BlobBytes() - mounted; n != 0 {
		t.Errorf("after the file-list prefetch, reading the listed files fetched %d blob bytes; want 0", n)
	}
	if n := mounted - fetched; n > 4<<20 {
		t.Errorf("mounting after the file-list prefetch fetched %d blob bytes; want at most 4 MiB of probing", n)
	}
	mustRun(t, "umount", mnt)
	mustRun(t, "losetup", "-d", loop)
	time.Sleep(300 * time.Millisecond)
	a.stop(t)
}
