package remote

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
	"go.uber.org/zap"
)

const (
	golden     = "../testdata/golden"
	helloLayer = "022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d"
	helloSHA   = "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014"
	// /hello (13,256 bytes) sits at virtual sector 12416 of the stack.
	helloOff, helloLen = 12416 * 512, 13256
)

// fastRetry keeps fault tests quick while keeping every limit finite.
var fastRetry = registry.RetryPolicy{MaxAttempts: 5, Deadline: 20 * time.Second, AttemptTimeout: 5 * time.Second,
	BaseDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond, MaxRetryAfter: 10 * time.Millisecond}

// stackBlobs returns the real two-layer overlaybd stack: the ext4 base layer (a
// ZFile) and the converted hello-world layer (tar → ZFile → LSMT).
func stackBlobs(t testing.TB) [][]byte {
	t.Helper()
	f, err := os.Open(golden + "/ext4_64.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var base []byte
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("ext4_64 in ext4_64.tar.gz: %v", err)
		}
		if strings.HasSuffix(h.Name, "ext4_64") {
			if base, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	hello, err := os.ReadFile(golden + "/hello-world-oci/blobs/sha256/" + helloLayer)
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{base, hello}
}

// pushStack pushes blobs as repo:latest and returns the device config reading
// them from server (the registry or a proxy in front of it).
func pushStack(t testing.TB, reg *registrytest.Registry, repo string, blobs [][]byte) func(server string) *config.ImageConfig {
	t.Helper()
	var lowers []config.Layer
	for _, b := range blobs {
		lowers = append(lowers, config.Layer{Digest: fmt.Sprintf("sha256:%x", sha256.Sum256(b)), Size: uint64(len(b))})
	}
	reg.PushImage(t, repo, "latest", registrytest.LayersImage(t, blobs...))
	return func(server string) *config.ImageConfig {
		return &config.ImageConfig{RepoBlobURL: server + "/v2/" + repo + "/blobs", Lowers: lowers}
	}
}

// truth is the stack read from local copies of the blobs.
func truth(t testing.TB, blobs [][]byte) *lsmt.Image {
	t.Helper()
	var ls []*lsmt.Layer
	for i, b := range blobs {
		l, _, err := layer.Open(bytes.NewReader(b), int64(len(b)), "local")
		if err != nil {
			t.Fatalf("local layer %d: %v", i, err)
		}
		ls = append(ls, l)
	}
	im, err := lsmt.NewImage(ls, nil)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// region is a range of the virtual disk with its true bytes.
type region struct {
	off  int64
	want []byte
}

// regions are the first 64 MiB (ext4 metadata and /hello) in 1 MiB reads, the
// start of every 2 GiB flex group, and
// scattered 256 KiB reads over the whole disk, with their true bytes.
func regions(t testing.TB, im *lsmt.Image) []region {
	t.Helper()
	var rs []region
	add := func(off int64, n int) {
		b := make([]byte, n)
		if _, err := im.ReadAt(b, off); err != nil {
			t.Fatalf("local read at %d: %v", off, err)
		}
		rs = append(rs, region{off, b})
	}
	for off := int64(0); off < 64<<20; off += 1 << 20 {
		add(off, 1<<20)
	}
	for off := int64(2 << 30); off < im.Size(); off += 2 << 30 {
		add(off, 1<<20) // ext4 flex group metadata
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 16; i++ {
		add(rng.Int64N(im.Size()/(256<<10))*(256<<10), 256<<10)
	}
	h := sha256.Sum256(rs[helloOff>>20].want[helloOff%(1<<20):][:helloLen])
	if hex.EncodeToString(h[:]) != helloSHA {
		t.Fatalf("local stack: /hello sha256 %x, want %s", h, helloSHA)
	}
	return rs
}

// readRegions reads every region from dev. A read either fails or returns the
// true bytes; wrong bytes fail the test. It returns how many reads failed and
// the first error.
func readRegions(t testing.TB, dev io.ReaderAt, rs []region, parallel int) (failed int, first error) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for _, r := range rs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			got := make([]byte, len(r.want))
			n, err := dev.ReadAt(got, r.off)
			if err == nil && n != len(got) {
				t.Errorf("read at %d: %d bytes, no error; want %d", r.off, n, len(got))
			}
			if err == nil && !bytes.Equal(got, r.want) {
				i := 0
				for got[i] == r.want[i] {
					i++
				}
				t.Errorf("read at %d: WRONG BYTES at +%d (%#x, want %#x)", r.off, i, got[i], r.want[i])
			}
			if err != nil {
				mu.Lock()
				failed++
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed, first
}

func newOpener(t testing.TB, cacheDir string, co cache.Options) *Opener {
	t.Helper()
	co.Logger = zap.NewNop()
	op, err := NewOpener(Options{Registry: registry.Options{Retry: fastRetry, Logger: zap.NewNop()},
		CacheDir: cacheDir, Cache: co, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return op
}

// recorder remembers the blobs an Opener hands out, for their cache stats.
type recorder struct {
	*Opener
	mu    sync.Mutex
	blobs []image.RemoteBlob
}

func (r *recorder) OpenBlob(ctx context.Context, url string, l config.Layer) (image.RemoteBlob, error) {
	b, err := r.Opener.OpenBlob(ctx, url, l)
	if err == nil {
		r.mu.Lock()
		r.blobs = append(r.blobs, b)
		r.mu.Unlock()
	}
	return b, err
}

// stats sums the cache stats of the recorded blobs.
func (r *recorder) stats() cache.Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s cache.Stats
	for _, b := range r.blobs {
		st := b.(interface{ Stats() cache.Stats }).Stats()
		s.BytesFetched += st.BytesFetched
		s.Refetches += st.Refetches
		s.ChecksumFailures += st.ChecksumFailures
		s.Evictions += st.Evictions
	}
	return s
}

// settleGoroutines waits until the goroutine count drops to at most base.
func settleGoroutines(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutine leak: %d running, %d before\n%s", runtime.NumGoroutine(), base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
