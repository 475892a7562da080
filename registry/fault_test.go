package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/registry/registrytest"
)

var fastRetry = RetryPolicy{MaxAttempts: 5, Deadline: 10 * time.Second, BaseDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond}

// proxied starts a registry with the golden layout behind a fault proxy and opens
// the overlaybd layer blob through the proxy.
func proxied(t *testing.T, o Options) (*registrytest.FaultProxy, *Blob, []byte) {
	t.Helper()
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	p := registrytest.NewFaultProxy(t, reg.URL)
	if o.Retry == (RetryPolicy{}) {
		o.Retry = fastRetry
	}
	c := testClient(t, o)
	b, err := c.OpenBlob(context.Background(), p.URL+"/v2/hello-world/blobs/"+helloLayer, helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return p, b, goldenBlob(t)
}

// Two faults, then a clean answer: the read returns the right bytes and costs
// exactly three requests.
func TestFaultsRecover(t *testing.T) {
	p, b, want := proxied(t, Options{})
	for _, f := range []registrytest.Fault{registrytest.Status500, registrytest.Status503, registrytest.ResetMidBody,
		registrytest.TruncateBody, registrytest.WrongContentRange, registrytest.LongBody, registrytest.ShortBody} {
		p.SetPlan(registrytest.Sequence(f, f))
		buf := make([]byte, 100000)
		n, err := b.ReadAt(buf, 4096)
		if err != nil || n != len(buf) || !bytes.Equal(buf, want[4096:4096+len(buf)]) {
			t.Errorf("%v: %d %v (bytes equal: %v)", f, n, err, bytes.Equal(buf, want[4096:4096+len(buf)]))
		}
		if p.Injected(f) != 2 || p.Matched() != 3 {
			t.Errorf("%v: %d injected, %d requests; want 2, 3", f, p.Injected(f), p.Matched())
		}
	}
	// A server ignoring Range near the start: the reader slices the full body.
	p.SetPlan(registrytest.Always(registrytest.IgnoreRange))
	buf := make([]byte, 1000)
	if n, err := b.ReadAt(buf, 5000); err != nil || n != 1000 || !bytes.Equal(buf, want[5000:6000]) {
		t.Errorf("IgnoreRange near start: %d %v", n, err)
	}
	// ... and far into the blob: an error, not retried.
	b.c.opts.MaxSkip = 4096
	_, err := b.ReadAt(buf, 500000)
	if !errors.Is(err, ErrBadResponse) || p.Matched() != 2 {
		t.Errorf("IgnoreRange far: %v, %d requests", err, p.Matched())
	}
}

// A fault on every request: the read fails with ErrUnavailable after exactly
// MaxAttempts requests.
func TestFaultsPersistent(t *testing.T) {
	p, b, _ := proxied(t, Options{})
	for _, f := range []registrytest.Fault{registrytest.Status500, registrytest.ResetMidBody, registrytest.TruncateBody,
		registrytest.WrongContentRange, registrytest.LongBody, registrytest.ShortBody} {
		p.SetPlan(registrytest.Always(f))
		buf := make([]byte, 10000)
		n, err := b.ReadAt(buf, 123)
		if n != 0 || !errors.Is(err, ErrUnavailable) {
			t.Errorf("%v: %d %v, want ErrUnavailable", f, n, err)
		}
		if p.Matched() != int64(fastRetry.MaxAttempts) {
			t.Errorf("%v: %d requests, want %d", f, p.Matched(), fastRetry.MaxAttempts)
		}
	}
}

func TestTooManyRequests(t *testing.T) {
	p, b, want := proxied(t, Options{})
	p.SetRetryAfter("1")
	p.SetPlan(registrytest.Sequence(registrytest.TooManyRequests))
	buf := make([]byte, 100)
	start := time.Now()
	if _, err := b.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, want[:100]) {
		t.Fatalf("after 429: %v", err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("Retry-After: 1 honoured for only %v", d)
	}
	// A Retry-After beyond the read deadline fails at once instead of sleeping.
	b.c.opts.Retry.Deadline = 2 * time.Second
	p.SetRetryAfter("3600")
	p.SetPlan(registrytest.Always(registrytest.TooManyRequests))
	start = time.Now()
	if _, err := b.ReadAt(buf, 0); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "429") {
		t.Errorf("persistent 429: %v", err)
	}
	if d := time.Since(start); d > time.Second || p.Matched() != 1 {
		t.Errorf("persistent 429 with a long Retry-After: %v, %d requests", d, p.Matched())
	}
}

// Random framing faults over many reads: every byte returned is the blob's, every
// failure is ErrUnavailable, requests stay within attempts × reads, and no
// goroutine outlives the client.
func TestFaultsRandom(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	p := registrytest.NewFaultProxy(t, reg.URL)
	want := goldenBlob(t)
	base := runtime.NumGoroutine()

	c, err := NewClient(Options{Keychain: anonymousKeychain{}, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.OpenBlob(context.Background(), p.URL+"/v2/hello-world/blobs/"+helloLayer, helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	p.SetPlan(registrytest.Random(42, 0.5, registrytest.Status500, registrytest.Status503, registrytest.ResetMidBody,
		registrytest.TruncateBody, registrytest.WrongContentRange, registrytest.LongBody, registrytest.ShortBody))
	rng := rand.New(rand.NewPCG(1, 2))
	const reads = 200
	ok, failed := 0, 0
	for i := 0; i < reads; i++ {
		off := rng.Int64N(int64(len(want)) - 1)
		buf := make([]byte, 1+rng.Int64N(min(65536, int64(len(want))-off)))
		n, err := b.ReadAt(buf, off)
		switch {
		case err == nil:
			if !bytes.Equal(buf[:n], want[off:off+int64(n)]) || n != len(buf) {
				t.Fatalf("read %d: wrong bytes at %d+%d", i, off, n)
			}
			ok++
		case errors.Is(err, ErrUnavailable) && n == 0:
			failed++
		default:
			t.Fatalf("read %d: %d, %v", i, n, err)
		}
	}
	if m := p.Matched(); m > int64(fastRetry.MaxAttempts*reads) {
		t.Errorf("%d requests for %d reads", m, reads)
	}
	if ok < reads/2 {
		t.Errorf("only %d of %d reads succeeded at a 50%% fault rate", ok, reads)
	}
	t.Logf("%d ok, %d failed, %d requests", ok, failed, p.Matched())
	b.Close()
	c.Close()
	settleGoroutines(t, base)
}

// Corruption with intact framing passes the raw reader (it cannot know) but not
// the ZFile block CRCs above it; a changed ETag is caught here.
func TestCorruptionDetection(t *testing.T) {
	p, b, want := proxied(t, Options{})
	p.SetPlan(registrytest.Always(registrytest.FlipBit))
	buf := make([]byte, 4096)
	if _, err := b.ReadAt(buf, 8192); err != nil || bytes.Equal(buf, want[8192:8192+4096]) {
		t.Fatalf("FlipBit through the raw reader: %v (documented: raw bytes are not verified)", err)
	}
	p.SetPlan(nil)

	local, err := os.Open(goldenLayout + "/blobs/sha256/" + strings.TrimPrefix(helloLayer, "sha256:"))
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	localLSMT, lsize, _, err := layer.Unwrap(local, helloLayerSize, "local")
	if err != nil {
		t.Fatal(err)
	}
	remoteLSMT, rsize, _, err := layer.Unwrap(b, b.Size(), "remote")
	if err != nil || rsize != lsize {
		t.Fatalf("unwrap remote: %v (%d vs %d)", err, rsize, lsize)
	}
	for _, f := range []registrytest.Fault{registrytest.FlipBit, registrytest.ChangedBlob} {
		p.SetPlan(registrytest.Always(f))
		rng := rand.New(rand.NewPCG(3, 4))
		errs := 0
		for i := 0; i < 30; i++ {
			off := rng.Int64N(lsize - 65536)
			got := make([]byte, 1+rng.IntN(65536))
			exp := make([]byte, len(got))
			if _, err := localLSMT.ReadAt(exp, off); err != nil {
				t.Fatal(err)
			}
			if _, err := remoteLSMT.ReadAt(got, off); err != nil {
				errs++
				continue
			}
			if !bytes.Equal(got, exp) {
				t.Fatalf("%v: ZFile reader returned wrong bytes at %d+%d", f, off, len(got))
			}
		}
		if errs == 0 {
			t.Errorf("%v on every request, yet no ZFile read failed", f)
		}
	}

	// With ETags, another ETag for the same (content-addressed) URL is asked
	// once more, then trusted: the bytes' own checks (ZFile CRCs above, digests)
	// judge them, not the ETag, which replicas compute each their own way.
	p.SetPlan(nil)
	p.SetETags(true)
	if _, err := b.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	p.SetPlan(registrytest.Always(registrytest.ChangedBlob))
	if _, err := b.ReadAt(buf, 0); err != nil || p.Matched() != 2 {
		t.Errorf("changed ETag: %v, %d requests; want the answer after 2 requests", err, p.Matched())
	}
}

// A Close during a read aborts it promptly.
func TestCloseAbortsRead(t *testing.T) {
	p, b, _ := proxied(t, Options{})
	p.SetLatency(2 * time.Second)
	done := make(chan error, 1)
	go func() {
		_, err := b.ReadAt(make([]byte, 10), 0)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("read during Close: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Close did not abort the read")
	}
	if _, err := b.ReadAtIntent(context.Background(), blobio.Demand, make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	_ = io.EOF
}

// A registry slower than AttemptTimeout: each attempt is cut off, the read fails
// after MaxAttempts requests, well before the deadline.
func TestAttemptTimeout(t *testing.T) {
	p, b, _ := proxied(t, Options{})
	p.SetLatency(500 * time.Millisecond)
	b.c.opts.Retry = RetryPolicy{MaxAttempts: 3, Deadline: 10 * time.Second, AttemptTimeout: 100 * time.Millisecond,
		BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}
	p.SetPlan(nil)
	start := time.Now()
	_, err := b.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("slow registry: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	if p.Matched() != 3 {
		t.Errorf("%d requests, want 3", p.Matched())
	}
}

// Reads through token auth, redirects and storage expiry leave no goroutines
// behind once the blob and client are closed.
func TestNoGoroutineLeakRedirectToken(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithTokenAuth("u", "p", 0), registrytest.WithRedirect(200*time.Millisecond))
	reg.PushLayout(t, goldenLayout, "hello-world")
	want := goldenBlob(t)
	base := runtime.NumGoroutine()
	c, err := NewClient(Options{Keychain: staticKeychain{"u", "p"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	checkRanges(t, b, want, 11, 10)
	time.Sleep(250 * time.Millisecond)
	checkRanges(t, b, want, 12, 10)
	if reg.StorageExpired() == 0 {
		t.Error("the signed URL never expired")
	}
	b.Close()
	c.Close()
	settleGoroutines(t, base)
}
