package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

func goldenBlob(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(goldenLayout + "/blobs/sha256/" + strings.TrimPrefix(helloLayer, "sha256:"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkRanges reads ranges of b and compares them with want.
func checkRanges(t *testing.T, b *Blob, want []byte, seed uint64, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < n; i++ {
		off := rng.Int64N(int64(len(want)))
		l := 1 + rng.IntN(200000)
		buf := make([]byte, l)
		got, err := b.ReadAt(buf, off)
		end := min(off+int64(l), int64(len(want)))
		if int64(got) != end-off {
			t.Fatalf("ReadAt(%d, %d) = %d, %v; want %d bytes", l, off, got, err, end-off)
		}
		if end-off < int64(l) && err != io.EOF {
			t.Fatalf("short read at the end without io.EOF: %v", err)
		}
		if end-off == int64(l) && err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", l, off, err)
		}
		if !bytes.Equal(buf[:got], want[off:end]) {
			t.Fatalf("ReadAt(%d, %d): wrong bytes", l, off)
		}
	}
}

func TestBlobReadGolden(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	want := goldenBlob(t)
	c := testClient(t, Options{})
	b, err := c.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != int64(len(want)) {
		t.Fatalf("size %d", b.Size())
	}
	checkRanges(t, b, want, 1, 50)
	// Whole blob, and past the end.
	all := make([]byte, len(want)+100)
	n, err := b.ReadAt(all, 0)
	if n != len(want) || err != io.EOF || !bytes.Equal(all[:n], want) {
		t.Fatalf("whole blob: %d %v", n, err)
	}
	if n, err := b.ReadAt(all[:10], int64(len(want))); n != 0 || err != io.EOF {
		t.Fatalf("at size: %d %v", n, err)
	}
	if _, err := b.ReadAt(all[:10], -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	// Size 0 asks the registry.
	b2, err := c.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), 0)
	if err != nil || b2.Size() != helloLayerSize {
		t.Fatalf("size from registry: %v %d", err, b2.Size())
	}
	b2.Close()
	if _, err := b2.ReadAt(all[:10], 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

func TestOpenBlobErrors(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	c := testClient(t, Options{Retry: RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond}})
	ctx := context.Background()
	_, err := c.OpenBlob(ctx, reg.BlobURL("hello-world", helloLayer), helloLayerSize+1)
	if !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "642561") {
		t.Errorf("wrong size: %v", err)
	}
	_, err = c.OpenBlob(ctx, reg.BlobURL("hello-world", "sha256:"+strings.Repeat("ab", 32)), 0)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}
	for _, u := range []string{
		"ftp://h/v2/r/blobs/" + helloLayer,
		"http:///v2/r/blobs/" + helloLayer,
		"http://h/r/blobs/" + helloLayer,
		"http://h/v2/r/" + helloLayer,
		"http://h/v2/r/blobs/sha256:1234",
		"http://h/v2/blobs/" + helloLayer,
	} {
		if _, err := c.OpenBlob(ctx, u, 0); err == nil || !strings.Contains(err.Error(), "blob URL") {
			t.Errorf("%s: %v", u, err)
		}
	}
	// Nothing listening: ErrUnavailable after the bounded retries.
	_, err = c.OpenBlob(ctx, "http://127.0.0.1:1/v2/r/blobs/"+helloLayer, 0)
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("connection refused: %v", err)
	}
}

func TestBlobParallelReads(t *testing.T) {
	reg := registrytest.New(t)
	gen := registrytest.OverlaybdImage(t, 5, 3<<20)
	reg.PushImage(t, "gen", "v1", gen.Image)
	c := testClient(t, Options{})
	im, err := c.Resolve(context.Background(), reg.Ref("gen:v1"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.OpenBlob(context.Background(), im.BlobURL(im.Layers[0].Digest), im.Layers[0].Size)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			checkRanges(t, b, gen.Blobs[0], uint64(g), 20)
		}()
	}
	wg.Wait()
}

func TestRedirectExpiryReresolves(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithRedirect(300*time.Millisecond))
	reg.PushLayout(t, goldenLayout, "hello-world")
	want := goldenBlob(t)
	c := testClient(t, Options{})
	b, err := c.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkRanges(t, b, want, 2, 20)
	// The location is cached: one registry GET (at open) for all reads.
	if g := reg.BlobGets(); g != 1 {
		t.Errorf("registry blob GETs %d, want 1 (redirect cached)", g)
	}
	if s := reg.StorageGets(); s != 21 {
		t.Errorf("storage GETs %d, want 21", s)
	}
	time.Sleep(400 * time.Millisecond)
	checkRanges(t, b, want, 3, 5)
	if reg.StorageExpired() != 1 || reg.BlobGets() != 2 {
		t.Errorf("after expiry: %d expired, %d registry GETs; want 1 and 2", reg.StorageExpired(), reg.BlobGets())
	}
	// A TTL shorter than the URL's makes the client re-resolve before the 403.
	c2 := testClient(t, Options{RedirectTTL: 50 * time.Millisecond})
	b2, err := c2.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	before, expired := reg.BlobGets(), reg.StorageExpired()
	time.Sleep(100 * time.Millisecond)
	checkRanges(t, b2, want, 4, 1)
	if reg.BlobGets() != before+1 || reg.StorageExpired() != expired {
		t.Errorf("TTL re-resolve: registry GETs %d→%d, expired %d→%d", before, reg.BlobGets(), expired, reg.StorageExpired())
	}
}

// settleGoroutines waits until the goroutine count drops to at most base.
func settleGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutine leak: %d running, %d before\n%s", n, base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A registry redirecting blob reads to plain HTTP on a remote host is refused
// at once (no retries), and the signed query stays out of the error.
func TestRedirectDowngradeRefused(t *testing.T) {
	var blobGets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
			http.Redirect(w, r, "http://storage.example.invalid/b?sig=s3cr3t", http.StatusTemporaryRedirect)
		}
	}))
	defer srv.Close()
	c := testClient(t, Options{Retry: fastRetry})
	_, err := c.OpenBlob(context.Background(), srv.URL+"/v2/r/blobs/"+helloLayer, 0)
	if err == nil || !strings.Contains(err.Error(), "refusing plain HTTP") || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("downgrade: %v", err)
	}
	if blobGets.Load() != 1 {
		t.Errorf("%d registry requests, want 1", blobGets.Load())
	}
}
