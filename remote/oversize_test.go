package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/registry"
)

const digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

// claimServer is a registry whose blobs claim total bytes (Content-Range) and
// read as zeros, allocating nothing per request in proportion to the claim.
func claimServer(t *testing.T, total int64) *httptest.Server {
	zeros := make([]byte, 4<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return
		}
		var first, last int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last)
		if last-first+1 > int64(len(zeros)) {
			http.Error(w, "range too long for the test server", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, total))
		w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(zeros[:last-first+1])
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A registry claiming a blob just under the bound: attach and a few reads
// allocate in proportion to what is read.
func TestHugeBlobAttachAllocatesWhatIsRead(t *testing.T) {
	srv := claimServer(t, cache.DefaultMaxBlobSize)
	op := newOpener(t, t.TempDir(), cache.Options{})
	defer op.Close()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	b, err := op.OpenBlob(context.Background(), srv.URL+"/v2/big/img/blobs/"+digest, config.Layer{Digest: digest})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	buf := make([]byte, 4096)
	for _, off := range []int64{0, 1 << 30, b.Size() / 2, b.Size() - 4096} {
		if _, err := b.ReadAt(buf, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	runtime.ReadMemStats(&m1)
	a := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("attach of a %d-byte blob and 4 reads: %d KiB allocated", b.Size(), a>>10)
	if a > 16<<20 {
		t.Errorf("attach and 4 reads allocated %d MiB", a>>20)
	}
}

// A registry claiming a 1 PiB blob (its Content-Range total, the size the
// daemon asks for when the config gives none) gets a clean attach error, counted,
// with nothing allocated for the claim.
func TestOversizeBlobAttachError(t *testing.T) {
	srv := claimServer(t, 1<<50)
	op := newOpener(t, t.TempDir(), cache.Options{})
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := op.OpenBlob(context.Background(), srv.URL+"/v2/evil/img/blobs/"+digest, config.Layer{Digest: digest})
	runtime.ReadMemStats(&m1)
	if !errors.Is(err, registry.ErrTooLarge) || !strings.Contains(err.Error(), "1125899906842624") {
		t.Fatalf("attach of a blob claiming 1 PiB: %v", err)
	}
	if n := metricSum(t, op.Collector(), "obd_registry_oversize_refused_total", nil); n != 1 {
		t.Errorf("obd_registry_oversize_refused_total = %v, want 1", n)
	}
	if a := m1.TotalAlloc - m0.TotalAlloc; a > 16<<20 {
		t.Errorf("refusing the blob allocated %d MiB", a>>20)
	}
	// A config naming a size above the bound is refused before any request.
	if _, err := op.OpenBlob(context.Background(), srv.URL+"/v2/evil/img/blobs/"+digest, config.Layer{Digest: digest, Size: 1 << 50}); !errors.Is(err, registry.ErrTooLarge) {
		t.Errorf("config size of 1 PiB: %v", err)
	}
}
