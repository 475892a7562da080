package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
)

// rangeLog is a reverse proxy in front of a registry that notes the Range of
// every blob GET.
type rangeLog struct {
	*httptest.Server
	mu     sync.Mutex
	ranges []string
}

func newRangeLog(t *testing.T, target string) *rangeLog {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	l := &rangeLog{}
	rp := httputil.NewSingleHostReverseProxy(u)
	l.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			l.mu.Lock()
			l.ranges = append(l.ranges, r.Header.Get("Range"))
			l.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(l.Close)
	return l
}

func (l *rangeLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.ranges
	l.ranges = nil
	return out
}

// TestColdOpenRoundTrips: a cold open of a blob of known size makes no 1-byte
// probe. It fetches the blob's head and, at the same time, its tail (trailer and
// indexes; a share of the blob that grows with it), each rounded to whole cache
// units, in two concurrent requests, so the layer's own open makes no more. A
// small blob (the hello-world layer, 628 KiB) stays lazy: its middle unit is not
// fetched. A blob that is not there still fails the open.
func TestColdOpenRoundTrips(t *testing.T) {
	blobs := stackBlobs(t)
	reg := registrytest.New(t)
	front := newRangeLog(t, reg.URL)
	cfg := pushStack(t, reg, "stack", blobs)(front.URL)
	op := newOpener(t, t.TempDir(), cache.Options{ReadAhead: -1})
	defer op.Close()
	us := int64(cache.DefaultRefillSize)

	for i, l := range []config.Layer{cfg.Lowers[1], cfg.Lowers[0]} {
		blob := blobs[1-i]
		u, _ := cfg.BlobURL(l.Digest)
		b, err := op.OpenBlob(context.Background(), u, l)
		if err != nil {
			t.Fatal(err)
		}
		size := int64(l.Size)
		tailFrom := (size - openTail(size)) / us * us
		got := front.take()
		want := []string{fmt.Sprintf("bytes=0-%d", openHead-1), fmt.Sprintf("bytes=%d-%d", tailFrom, size-1)}
		if len(got) == 2 && got[0] != want[0] {
			got[0], got[1] = got[1], got[0]
		}
		if !slices.Equal(got, want) {
			t.Errorf("open of a %d-byte blob: blob requests %q, want %q (in any order)", size, got, want)
		}
		if tailFrom <= openHead {
			t.Fatalf("a %d-byte blob leaves no middle unfetched: the test needs a larger blob", size)
		}
		head := make([]byte, openHead)
		tail := make([]byte, size-tailFrom)
		if _, err := b.ReadAt(head, 0); err != nil || !bytes.Equal(head, blob[:openHead]) {
			t.Fatalf("head: %v", err)
		}
		if _, err := b.ReadAt(tail, tailFrom); err != nil || !bytes.Equal(tail, blob[tailFrom:]) {
			t.Fatalf("tail: %v", err)
		}
		if got := front.take(); len(got) != 0 {
			t.Errorf("reads of the head and tail after the open asked the registry again: %q", got)
		}
		b.Close()
	}

	missing := config.Layer{Digest: "sha256:" + strings.Repeat("ab", 32), Size: 5 << 20}
	u, _ := cfg.BlobURL(missing.Digest)
	if b, err := op.OpenBlob(context.Background(), u, missing); !errors.Is(err, registry.ErrNotFound) {
		if err == nil {
			b.Close()
		}
		t.Errorf("open of a missing blob: %v, want ErrNotFound", err)
	}
}

// TestColdOpenCancelled: a cold open whose registry does not answer ends when
// its context does (an attach given up), not when the registry's retry budget
// runs out.
func TestColdOpenCancelled(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	op := newOpener(t, t.TempDir(), cache.Options{ReadAhead: -1})
	defer op.Close()
	d := "sha256:" + strings.Repeat("ef", 32)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	b, err := op.OpenBlob(ctx, srv.URL+"/v2/app/blobs/"+d, config.Layer{Digest: d, Size: 4 << 20})
	if err == nil {
		b.Close()
		t.Fatal("open succeeded against a registry that never answers")
	}
	if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took > 5*time.Second {
		t.Errorf("open took %v and failed with %v; want the context's error within 5 s (the registry's retry deadline is 20 s)", took, err)
	}
}
