package remote

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/registry/registrytest"
)

// shaper is an HTTP proxy modelling a WAN link to the registry: every request
// waits one round trip before its answer starts, and all answer bodies share a
// bandwidth cap (a token bucket paced in 64 KiB chunks).
type shaper struct {
	*httptest.Server
	target string
	rtt    time.Duration
	bw     float64 // bytes per second; 0: no cap
	client *http.Client

	mu   sync.Mutex
	next time.Time

	blobBytes, blobReqs atomic.Int64
	reqs, conns         atomic.Int64
	// handshake, when set, delays the first request of every connection by
	// that much more (TCP's handshake: a reused connection saves it).
	handshake time.Duration
}

// connKey marks a connection whose first request has been served.
type connKey struct{}

func newShaper(b *testing.B, target string, rtt time.Duration, bw float64) *shaper {
	s := &shaper{target: strings.TrimSuffix(target, "/"), rtt: rtt, bw: bw,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		s.conns.Add(1)
		return context.WithValue(ctx, connKey{}, new(atomic.Bool))
	}
	s.Start()
	b.Cleanup(func() { s.Close(); s.client.CloseIdleConnections() })
	return s
}

// reserve books n bytes on the link and returns when they have gone through.
func (s *shaper) reserve(n int) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.next.Before(now) {
		s.next = now
	}
	s.next = s.next.Add(time.Duration(float64(n) / s.bw * float64(time.Second)))
	return s.next
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *shaper) serve(w http.ResponseWriter, r *http.Request) {
	s.reqs.Add(1)
	delay := s.rtt
	if used, ok := r.Context().Value(connKey{}).(*atomic.Bool); ok && !used.Swap(true) {
		delay += s.handshake
	}
	if !sleepCtx(r.Context(), delay) {
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, s.target+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	resp, err := s.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	blob := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
	if blob {
		s.blobReqs.Add(1)
	}
	buf := make([]byte, 64<<10)
	fl, _ := w.(http.Flusher)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if s.bw > 0 && !sleepCtx(r.Context(), time.Until(s.reserve(n))) {
				return
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
			if blob {
				s.blobBytes.Add(int64(n))
			}
		}
		if err != nil {
			return
		}
	}
}

// benchImage pushes a generated single-layer image of OBD_BENCH_IMAGE_MIB
// (default 256) MiB and returns its blob and layer.
func benchImage(b *testing.B, reg *registrytest.Registry) ([]byte, config.Layer) {
	mib := 256
	if v, err := strconv.Atoi(os.Getenv("OBD_BENCH_IMAGE_MIB")); err == nil && v > 0 {
		mib = v
	}
	g := registrytest.OverlaybdImage(b, 42, mib<<20)
	reg.PushImage(b, "bench", "v1", g.Image)
	ls, err := g.Image.Layers()
	if err != nil {
		b.Fatal(err)
	}
	d, err := ls[0].Digest()
	if err != nil {
		b.Fatal(err)
	}
	return g.Blobs[0], config.Layer{Digest: d.String(), Size: uint64(len(g.Blobs[0]))}
}

func openBench(b *testing.B, op *Opener, server string, l config.Layer) image.Blob {
	blob, err := op.OpenBlob(context.Background(), server+"/v2/bench/blobs/"+l.Digest, l)
	if err != nil {
		b.Fatal(err)
	}
	return blob
}

// BenchmarkScatteredWorkingSet reads a scattered 5% working set (random
// 64 KiB-aligned 64 KiB reads, 4 readers) of a generated image lazily from a
// registry 50 ms away, against the same reads from a local file. It reports how
// many times slower the lazy reads are and the fetch amplification (bytes
// fetched / bytes read).
func BenchmarkScatteredWorkingSet(b *testing.B) {
	reg := registrytest.New(b)
	data, l := benchImage(b, reg)
	sh := newShaper(b, reg.URL, 50*time.Millisecond, 0)
	const chunk = 64 << 10
	rng := rand.New(rand.NewPCG(1, 2))
	offs := rng.Perm(len(data) / chunk)[:len(data)/chunk/20]
	local := filepath.Join(b.TempDir(), "blob")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(local)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	read := func(r io.ReaderAt) time.Duration {
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, chunk)
				for {
					i := next.Add(1) - 1
					if i >= int64(len(offs)) {
						return
					}
					off := int64(offs[i]) * chunk
					if _, err := r.ReadAt(buf, off); err != nil {
						b.Error(err)
						return
					}
					if string(buf) != string(data[off:off+chunk]) {
						b.Errorf("wrong bytes at %d", off)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	b.ResetTimer()
	var lazy, base time.Duration
	var fetched int64
	for i := 0; i < b.N; i++ {
		base += read(f)
		op := newOpener(b, b.TempDir(), cache.Options{})
		blob := openBench(b, op, sh.URL, l)
		before := sh.blobBytes.Load()
		lazy += read(blob)
		fetched += sh.blobBytes.Load() - before
		blob.Close()
		op.Close()
	}
	b.StopTimer()
	readBytes := float64(len(offs)) * chunk * float64(b.N)
	b.ReportMetric(float64(lazy)/float64(base), "x-slower-vs-local")
	b.ReportMetric(float64(fetched)/readBytes, "amplification")
	b.ReportMetric(readBytes/lazy.Seconds()/(1<<20)/float64(1), "lazy-MiB/s")
	b.ReportMetric(readBytes/base.Seconds()/(1<<20), "local-MiB/s")
}

// BenchmarkSequentialHighRTT reads a generated blob front to back with 1 MiB
// reads from a registry 200 ms away behind a 100 MiB/s cap, and reports the
// throughput as a fraction of the cap (read-ahead and coalescing must keep
// bandwidth × RTT bytes in flight).
func BenchmarkSequentialHighRTT(b *testing.B) {
	const capBW = 100 << 20
	reg := registrytest.New(b)
	data, l := benchImage(b, reg)
	sh := newShaper(b, reg.URL, 200*time.Millisecond, capBW)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		op := newOpener(b, b.TempDir(), cache.Options{})
		blob := openBench(b, op, sh.URL, l)
		buf := make([]byte, 1<<20)
		start := time.Now()
		for off := int64(0); off < int64(len(data)); off += int64(len(buf)) {
			n, err := blob.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				b.Fatal(err)
			}
			if string(buf[:n]) != string(data[off:off+int64(n)]) {
				b.Fatalf("wrong bytes at %d", off)
			}
		}
		total += time.Since(start)
		blob.Close()
		op.Close()
	}
	b.StopTimer()
	bps := float64(len(data)) * float64(b.N) / total.Seconds()
	b.ReportMetric(bps/capBW, "fraction-of-cap")
	b.ReportMetric(float64(sh.blobReqs.Load())/float64(b.N), "requests/op")
}
