package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
	"go.uber.org/zap"
)

// flipOnceProxy forwards to a registry and flips one bit of one blob byte in the
// first response that carries it: a bad answer that frames correctly, which the
// cache stores with page CRCs of the bad bytes.
type flipOnceProxy struct {
	*httptest.Server
	mu      sync.Mutex
	digest  string
	at      int64
	flipped int
}

func newFlipOnceProxy(t *testing.T, target string) *flipOnceProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &flipOnceProxy{at: -1}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		var first, last, size int64
		if p.at < 0 || p.flipped > 0 || resp.StatusCode != http.StatusPartialContent ||
			!strings.Contains(resp.Request.URL.Path, p.digest) {
			return nil
		}
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &size); err != nil ||
			p.at < first || p.at > last {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		body[p.at-first] ^= 0x10
		p.flipped++
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return nil
	}
	p.Server = httptest.NewServer(rp)
	t.Cleanup(p.Close)
	return p
}

func (p *flipOnceProxy) arm(digest string, at int64) {
	p.mu.Lock()
	p.digest, p.at, p.flipped = digest, at, 0
	p.mu.Unlock()
}

// blobRegions names a byte in each metadata structure of a layer blob that the
// open reads: tar headers, ZFile header, trailer and jump table, and, for an
// uncompressed LSMT file, its header, trailer and index.
func blobRegions(t *testing.T, blob []byte) map[string]int64 {
	t.Helper()
	_, _, w, err := layer.Unwrap(bytes.NewReader(blob), int64(len(blob)), "blob")
	if err != nil {
		t.Fatal(err)
	}
	rs := map[string]int64{}
	base := int64(0)
	if w.Tar {
		base = w.TarPayloadOffset
		rs["tar header"] = base - tarwrap.BlockSize + 100
		rs["tar first block"] = 10
	}
	if z := w.ZFile; z != nil {
		info := z.Info()
		rs["zfile header"] = base + 40
		if !info.Header.Has(zfile.FlagHeaderOverwrite) {
			rs["zfile trailer"] = base + info.FileSize - zfile.HeaderSize + 40
		}
		rs["zfile jump table"] = base + info.IndexOffset + 8
		rs["zfile jump table end"] = base + info.IndexOffset + 4*info.Blocks - 4
		return rs
	}
	l, err := lsmt.OpenLayer(bytes.NewReader(blob[base:]), int64(len(blob))-base)
	if err != nil {
		t.Fatal(err)
	}
	rs["lsmt header"] = base + 3
	rs["lsmt trailer"] = int64(len(blob)) - lsmt.HeaderSize + 32
	rs["lsmt index"] = base + int64(l.Trailer().IndexOffset) + 14
	return rs
}

// A corrupted tar header, ZFile header, trailer or jump table that a registry
// served once (and the cache stored) is evicted and fetched again: the attach
// through the real cache succeeds at once and every byte reads right.
func TestCorruptMetadataFromRegistryHealed(t *testing.T) {
	blobs := stackBlobs(t)
	rs := regions(t, truth(t, blobs))
	reg := registrytest.New(t)
	p := newFlipOnceProxy(t, reg.URL)
	cfg := pushStack(t, reg, "stack", blobs)(p.URL)
	for i, b := range blobs {
		for region, at := range blobRegions(t, b) {
			t.Run(fmt.Sprintf("layer%d/%s", i, region), func(t *testing.T) {
				p.arm(cfg.Lowers[i].Digest[len("sha256:"):], at)
				op := &recorder{Opener: newOpener(t, t.TempDir(), cache.Options{})}
				defer op.Close()
				im, err := image.Open(context.Background(), cfg, image.Options{Remote: op, Logger: zap.NewNop()})
				if err != nil {
					t.Fatalf("attach with a corrupted %s at %d: %v", region, at, err)
				}
				defer im.Close()
				if p.flipped != 1 {
					t.Fatalf("the bit at %d was flipped %d times", at, p.flipped)
				}
				if failed, err := readRegions(t, im, rs, 4); failed > 0 {
					t.Fatalf("%d reads failed: %v", failed, err)
				}
				t.Logf("stats %+v", op.stats())
			})
		}
	}
}

// damage is what a registry does to the blob responses it damages: flipped
// bytes (twice as likely as each other fault: the registry client cannot see
// them, only the format checks and block CRCs can), cut or short bodies, server
// errors.
var damage = []registrytest.Fault{registrytest.FlipBit, registrytest.FlipBit, registrytest.TruncateBody,
	registrytest.ResetMidBody, registrytest.ShortBody, registrytest.Status500, registrytest.Status503}

// damageRetry gives each read 10 attempts: at 25% of responses cut or 5xx, five
// (the default) all fail for about one request in a thousand, which is the
// registry client's policy at work, not what this test is about.
var damageRetry = func() registry.RetryPolicy { p := fastRetry; p.MaxAttempts = 10; return p }()

// extents are every mapped (data) extent of the stack, with the true bytes: the
// bytes an attach fetches from the layer blobs.
func extents(t *testing.T, blobs [][]byte) []region {
	t.Helper()
	im := truth(t, blobs)
	var rs []region
	for _, b := range blobs {
		l, _, err := layer.Open(bytes.NewReader(b), int64(len(b)), "local")
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range l.Segments() {
			if s.Zeroed {
				continue
			}
			for off, end := int64(s.Offset)*512, int64(s.End())*512; off < end; off += 1 << 20 {
				want := make([]byte, min(end-off, 1<<20))
				if _, err := im.ReadAt(want, off); err != nil {
					t.Fatal(err)
				}
				rs = append(rs, region{off, want})
			}
		}
	}
	return rs
}

// The whole attach path (open: tar, ZFile and LSMT metadata; then every data
// extent of every layer) through a registry that damages a random 30% of blob
// responses: the attach succeeds and every byte reads right, for several seeds.
// The bytes taken from the registry are logged against the blobs' size.
func TestAttachUnderDamagedResponses(t *testing.T) {
	blobs := stackBlobs(t)
	rs := append(extents(t, blobs), regions(t, truth(t, blobs))...)
	size := 0
	for _, b := range blobs {
		size += len(b)
	}
	reg := registrytest.New(t)
	// Default fetches (read-ahead, coalescing), and one refill unit per request
	// (many more requests to damage).
	modes := map[string]cache.Options{"default": {}, "unit": {MaxFetchSize: cache.DefaultRefillSize, ReadAhead: -1}}
	for mode, co := range modes {
		for seed := uint64(1); seed <= 8; seed++ {
			t.Run(fmt.Sprintf("%s/seed%d", mode, seed), func(t *testing.T) {
				front := registrytest.NewCountingProxy(t, reg.URL)
				p := registrytest.NewFaultProxy(t, front.URL)
				p.SetPlan(registrytest.Random(seed, 0.3, damage...))
				cfg := pushStack(t, reg, "stack", blobs)(p.URL)
				co.Logger = zap.NewNop()
				o, err := NewOpener(Options{Registry: registry.Options{Retry: damageRetry, Logger: zap.NewNop()},
					CacheDir: t.TempDir(), Cache: co, Logger: zap.NewNop()})
				if err != nil {
					t.Fatal(err)
				}
				op := &recorder{Opener: o}
				defer op.Close()
				im, err := image.Open(context.Background(), cfg, image.Options{Remote: op, Logger: zap.NewNop()})
				if err != nil {
					t.Fatalf("attach: %v", err)
				}
				defer im.Close()
				if failed, err := readRegions(t, im, rs, 4); failed > 0 {
					t.Errorf("%d of %d reads failed: %v", failed, len(rs), err)
				}
				injected := int64(0)
				for _, f := range damage {
					injected += p.Injected(f)
				}
				t.Logf("%d blob requests, %d damaged; %d bytes from the registry for %d bytes of blobs (%.2fx); cache %+v",
					p.Matched(), injected, front.BlobBytes(), size, float64(front.BlobBytes())/float64(size), op.stats())
			})
		}
	}
}
