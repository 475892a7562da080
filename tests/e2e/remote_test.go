package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

const helloBlobSize = 642560

// TestAttachImageReference attaches the converted hello-world image straight from a
// registry on 127.0.0.1, reads /hello, and checks that the registry sent each blob
// byte at most once and nothing at all to a second attach on the same cache.
func TestAttachImageReference(t *testing.T) {
	needRoot(t)
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/hello-world:amd64-converted"
	dir := t.TempDir()
	cacheDir := filepath.Join(dir, "cache")
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	for round := 0; round < 2; round++ {
		before := proxy.BlobBytes()
		a := startFG(t, "--frontend", "fuse", "--global-config", "/nonexistent", "--cache-dir", cacheDir,
			"--run-dir", filepath.Join(dir, "run"), ref)
		mountHello(t, a.path, mnt)
		a.stop(t)
		fetched := proxy.BlobBytes() - before
		t.Logf("round %d: %d blob bytes from the registry", round, fetched)
		// A cold open reads the blob's first byte to surface auth and not-found
		// errors at attach time (as the reference does): 1 byte beyond the data. A
		// blob the cache holds (part of) is opened without asking the registry.
		switch {
		case round == 0 && (fetched <= 1 || fetched > helloBlobSize+1):
			t.Errorf("first attach fetched %d blob bytes; want 2..%d (each byte at most once)", fetched, helloBlobSize+1)
		case round == 1 && fetched != 0:
			t.Errorf("second attach on a warm cache fetched %d blob bytes, want 0", fetched)
		}
	}
}

// TestLargeImageLazy attaches a generated 1 GiB ext4 image (800 MiB of file data)
// from a loopback registry, reads three of its 100 files and checks that only a
// small fraction of the layer blob crossed the network.
func TestLargeImageLazy(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("builds an 800 MiB layer")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	const files, fileSize = 100, 8 << 20
	sums := map[string]string{}
	rng := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, fileSize)
	for i := 0; i < files; i++ {
		rng.Read(buf)
		name := fmt.Sprintf("f%03d", i)
		if err := os.WriteFile(filepath.Join(root, name), buf, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(buf)
		sums[name] = hex.EncodeToString(s[:])
	}
	raw := filepath.Join(dir, "disk.raw")
	mustRun(t, "mkfs.ext4", "-q", "-F", "-d", root, raw, "1G")
	os.RemoveAll(root)
	layerPath := filepath.Join(dir, "layer.tar")
	mustRun(t, bin("obd"), "-q", "import", "--compress", "lz4", "--tar", raw, layerPath)
	os.Remove(raw)
	blob, err := os.ReadFile(layerPath)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(layerPath)
	reg := registrytest.New(t)
	reg.PushImage(t, "big", "v1", registrytest.LayersImage(t, blob))
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/big:v1"

	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	a := startFG(t, "--frontend", "fuse", "--global-config", "/nonexistent",
		"--cache-dir", filepath.Join(dir, "cache"), "--run-dir", filepath.Join(dir, "run"), ref)
	defer a.stop(t)
	mustRun(t, "mount", "-t", "ext4", "-o", "loop,ro", a.path, mnt)
	defer run(t, time.Minute, "umount", mnt)
	var read int64
	for _, name := range []string{"f007", "f050", "f093"} {
		if got := fileSHA(t, filepath.Join(mnt, name)); got != sums[name] {
			t.Errorf("%s: sha256 %s, want %s", name, got, sums[name])
		}
		read += fileSize
	}
	entries, err := os.ReadDir(mnt)
	if err != nil || len(entries) < files {
		t.Errorf("listing: %d entries, %v", len(entries), err)
	}
	fetched := proxy.BlobBytes()
	frac := float64(fetched) / float64(len(blob))
	t.Logf("read %d MiB of files: fetched %d of %d blob bytes (%.1f%%)", read>>20, fetched, len(blob), 100*frac)
	if fetched < read || frac > 0.10 {
		t.Errorf("fetched %d bytes of a %d-byte blob for %d bytes of files: want between the bytes read and 10%% of the blob", fetched, len(blob), read)
	}
}
