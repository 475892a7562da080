package p2p_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	b64 "encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
	"github.com/obd-project/obd/remote"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

const unit = 256 << 10 // cache refill unit = P2P chunk

var fastRetry = registry.RetryPolicy{MaxAttempts: 5, Deadline: 20 * time.Second, AttemptTimeout: 5 * time.Second,
	BaseDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond, MaxRetryAfter: 10 * time.Millisecond}

// pushBlob pushes data as the single layer of repo:latest and returns the layer.
func pushBlob(t testing.TB, reg *registrytest.Registry, repo string, data []byte) config.Layer {
	t.Helper()
	reg.PushImage(t, repo, "latest", registrytest.LayersImage(t, data))
	return config.Layer{Digest: fmt.Sprintf("sha256:%x", sha256.Sum256(data)), Size: uint64(len(data))}
}

// randomData is incompressible test content.
func randomData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func newOpener(t testing.TB, dir string, pc config.P2PConfig, m *p2p.Metrics) *remote.Opener {
	t.Helper()
	return newOpenerCache(t, dir, pc, m, cache.Options{RefillSize: unit, ReadAhead: -1, Logger: zap.NewNop()})
}

// newOpenerCache is newOpener with these cache options.
func newOpenerCache(t testing.TB, dir string, pc config.P2PConfig, m *p2p.Metrics, co cache.Options) *remote.Opener {
	t.Helper()
	op, err := remote.NewOpener(remote.Options{
		Registry: registry.Options{Retry: fastRetry, Logger: zap.NewNop()},
		CacheDir: dir, Cache: co,
		P2P: pc, P2PMetrics: m, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(op.Close)
	return op
}

func openBlob(t testing.TB, op *remote.Opener, blobURL string, l config.Layer) image.Blob {
	t.Helper()
	b, err := op.OpenBlob(context.Background(), blobURL, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// span is a read of the working set.
type span struct{ off, n int64 }

// scattered returns count reads of 4 KiB..320 KiB at random offsets of a blob of
// size bytes, and the bytes of the units they touch (the working set as the
// cache fetches it).
func scattered(seed uint64, size int64, count int) ([]span, int64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	units := map[int64]bool{}
	var out []span
	for range count {
		n := 4096 + rng.Int64N(316<<10)
		off := rng.Int64N(size - n)
		out = append(out, span{off, n})
		for u := off / unit; u <= (off+n-1)/unit; u++ {
			units[u] = true
		}
	}
	var ws int64
	for u := range units {
		ws += min(unit, size-u*unit)
	}
	return out, ws
}

// readAll reads spans from b (parallel at a time), failing the test on any wrong
// byte, and returns the number of failed reads; stop (if not nil) ends it early.
func readAll(t testing.TB, b io.ReaderAt, data []byte, spans []span, parallel int, done *atomic.Int64) (failed int64) {
	t.Helper()
	var wg sync.WaitGroup
	var nf atomic.Int64
	sem := make(chan struct{}, parallel)
	for _, s := range spans {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			got := make([]byte, s.n)
			n, err := b.ReadAt(got, s.off)
			if err != nil {
				nf.Add(1)
				t.Logf("read [%d, +%d): %v", s.off, s.n, err)
			} else if int64(n) != s.n || !bytes.Equal(got, data[s.off:s.off+s.n]) {
				t.Errorf("read [%d, +%d): WRONG BYTES", s.off, s.n)
			}
			if done != nil {
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	return nf.Load()
}

func counterValue(t testing.TB, m *p2p.Metrics, which string, labels ...string) float64 {
	t.Helper()
	switch which {
	case "bytes":
		return value(m.Bytes.WithLabelValues(labels...))
	case "peerErrors":
		return value(m.PeerErrors.WithLabelValues(labels...))
	case "fallbacks":
		return value(m.Fallbacks.WithLabelValues(labels...))
	}
	t.Fatalf("no counter %s", which)
	return 0
}

// sumVec sums every series of a counter vector.
func sumVec(t testing.TB, m *p2p.Metrics, which string) float64 {
	t.Helper()
	var total float64
	switch which {
	case "peerErrors":
		for _, r := range []string{"connect", "timeout", "status", "framing", "bad-data", "request", "other", "proxy", "upstream"} {
			total += value(m.PeerErrors.WithLabelValues(r))
		}
	case "fallbacks":
		for _, f := range [][2]string{{"peer", "next"}, {"proxy", "registry"}} {
			total += value(m.Fallbacks.WithLabelValues(f[0], f[1]))
		}
	}
	return total
}

// listen reserves a loopback port for a peer server.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		return 0
	}
	return m.Counter.GetValue()
}

func base64(s string) string { return b64.StdEncoding.EncodeToString([]byte(s)) }

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
