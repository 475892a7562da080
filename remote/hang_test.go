package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
)

// blobServer serves data as every blob's bytes after delay; with hang set,
// every request after the first (the open probe) waits for release instead.
func blobServer(t *testing.T, data []byte, delay time.Duration, hang <-chan struct{}, waiting *atomic.Int64) *httptest.Server {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return
		}
		if hang != nil && n.Add(1) > 1 {
			waiting.Add(1)
			select { // accepts, never answers
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		time.Sleep(delay)
		var first, last int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(data)))
		w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[first : last+1])
	}))
	t.Cleanup(srv.Close)
	return srv
}

// One registry hangs (accepts requests and never answers) while a device of
// another registry reads cold data through the same cache: its reads take about
// as long as without the hung registry.
func TestHungRegistryDoesNotStallOthers(t *testing.T) {
	const unitSize = 64 << 10
	op := newOpener(t, t.TempDir(), cache.Options{RefillSize: unitSize, MaxFetchSize: unitSize, ReadAhead: -1})
	defer op.Close()
	data := bytes.Repeat([]byte("healthy!"), 32*unitSize/8)
	coldReads := func(digest string) time.Duration {
		srv := blobServer(t, data, 20*time.Millisecond, nil, nil)
		b, err := op.OpenBlob(context.Background(), srv.URL+"/v2/app/blobs/"+digest, config.Layer{Digest: digest})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		start := time.Now()
		var wg sync.WaitGroup
		for i := 0; i < 32; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				off := int64(i) * unitSize
				if _, err := b.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+4096]) {
					t.Errorf("read at %d: %v or wrong bytes", off, err)
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	normal := coldReads("sha256:1111111111111111111111111111111111111111111111111111111111111111")

	release := make(chan struct{})
	var waiting atomic.Int64
	hung := blobServer(t, make([]byte, 64<<20), 0, release, &waiting)
	const hd = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hb, err := op.OpenBlob(context.Background(), hung.URL+"/v2/sick/blobs/"+hd, config.Layer{Digest: hd})
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	defer close(release) // first: the hung fills end, and the close need not wait for them
	for i := 0; i < 4*cache.DefaultMaxFetches; i++ {
		go hb.ReadAt(make([]byte, 4096), int64(i)*unitSize)
	}
	for deadline := time.Now().Add(10 * time.Second); waiting.Load() < cache.DefaultMaxFetches && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	done := make(chan time.Duration, 1)
	go func() { done <- coldReads("sha256:2222222222222222222222222222222222222222222222222222222222222222") }()
	select {
	case took := <-done:
		t.Logf("32 cold reads: %v alone, %v while another registry hangs (%d requests hanging)", normal, took, waiting.Load())
		if took > 2*normal+500*time.Millisecond {
			t.Errorf("cold reads took %v while another registry hangs, %v alone", took, normal)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("cold reads stalled behind a hung registry (%v alone)", normal)
	}
}
