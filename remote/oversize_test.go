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

// A registry claiming a 1 PiB blob (its Content-Range total, the size the
// daemon asks for when the config gives none) gets a clean attach error, counted,
// with nothing allocated for the claim.
func TestOversizeBlobAttachError(t *testing.T) {
	const digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return
		}
		var first, last int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, int64(1)<<50))
		w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(make([]byte, last-first+1))
	}))
	defer srv.Close()
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
