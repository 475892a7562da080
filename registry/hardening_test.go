package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const zeroDigest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

// rangeServer answers blob range requests over a blob of claimed total bytes
// (zeros), with etag(n) as the ETag of the n-th answer ("" for none).
func rangeServer(t *testing.T, total int64, etag func(n int64) string) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return
		}
		var first, last int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last)
		if tag := etag(n.Add(1)); tag != "" {
			w.Header().Set("ETag", tag)
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, total))
		w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(make([]byte, last-first+1))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

type nopObserver struct{ n atomic.Int64 }

func (*nopObserver) Request(string, int, time.Duration) {}
func (*nopObserver) Bytes(int64)                        {}
func (*nopObserver) Retry(string, time.Duration)        {}
func (o *nopObserver) OversizeRefused()                 { o.n.Add(1) }

// A registry claiming a 1 PiB blob (Content-Range total, with the size unknown
// as the daemon opens it) gets a clean error naming the claimed size; so does a
// size from a config or manifest given to OpenBlob or LazyBlob.
func TestOversizeBlobRefused(t *testing.T) {
	srv, _ := rangeServer(t, 1<<50, func(int64) string { return "" })
	obs := &nopObserver{}
	c := testClient(t, Options{Retry: fastRetry, Observer: obs})
	u := srv.URL + "/v2/evil/img/blobs/" + zeroDigest
	_, err := c.OpenBlob(context.Background(), u, 0)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "1125899906842624") || !strings.Contains(err.Error(), zeroDigest) {
		t.Fatalf("OpenBlob of a blob claiming 1 PiB: %v", err)
	}
	if _, err := c.OpenBlob(context.Background(), u, 1<<50); !errors.Is(err, ErrTooLarge) {
		t.Errorf("OpenBlob with a 1 PiB expected size: %v", err)
	}
	if _, err := c.LazyBlob(u, 1<<50); !errors.Is(err, ErrTooLarge) {
		t.Errorf("LazyBlob of 1 PiB: %v", err)
	}
	if n := obs.n.Load(); n != 3 {
		t.Errorf("%d refusals observed, want 3", n)
	}
	// The bound is configurable.
	small := testClient(t, Options{Retry: fastRetry, MaxBlobSize: 1 << 20})
	if _, err := small.LazyBlob(u, 2<<20); !errors.Is(err, ErrTooLarge) {
		t.Errorf("LazyBlob of 2 MiB with a 1 MiB bound: %v", err)
	}
}

// A manifest naming a 1 PiB layer fails to resolve, before anything opens it.
func TestResolveOversizeLayer(t *testing.T) {
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": zeroDigest, "size": 2},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": zeroDigest, "size": int64(1) << 50}},
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Write(manifest)
	}))
	defer srv.Close()
	c := testClient(t, Options{Retry: fastRetry})
	_, err := c.Resolve(context.Background(), strings.TrimPrefix(srv.URL, "http://")+"/x:big")
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "layer 0") {
		t.Fatalf("resolve of a manifest with a 1 PiB layer: %v", err)
	}
}

// Replicas behind a load balancer compute different ETags for the same
// content-addressed blob: no read fails.
func TestAlternatingETagReplicas(t *testing.T) {
	srv, n := rangeServer(t, 1<<20, func(n int64) string { return fmt.Sprintf(`"6650a1f%d-100000"`, n%2) })
	c := testClient(t, Options{Retry: fastRetry})
	b, err := c.OpenBlob(context.Background(), srv.URL+"/v2/img/blobs/"+zeroDigest, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := 0; i < 20; i++ {
		if _, err := b.ReadAt(make([]byte, 4096), int64(i)*4096); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	t.Logf("20 reads, %d requests", n.Load())
}
