package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/obd-project/obd/registry/registrytest"
)

// Issue 11's cold-start benchmark: a ~200 MiB image whose entrypoint reads 3 MiB,
// over a WAN-like link to the registry.
const (
	coldFiles   = 200     // files of random data in /data
	coldFileLen = 1 << 20 // bytes per file
	coldRTT     = 50 * time.Millisecond
	coldBW      = 100 << 20 // link bytes per second
)

// coldReaderSource is the image's entrypoint: it reads three of the data files
// and prints "ready", as a service that needs a few MiB of its image to start.
const coldReaderSource = `package main

import (
	"fmt"
	"os"
)

func main() {
	n := 0
	for _, p := range []string{"/data/f007", "/data/f100", "/data/f193"} {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		n += len(b)
	}
	fmt.Printf("ready (%d bytes read)\n", n)
}
`

// BenchmarkColdStart times, with every cache cold and the registry behind a
// shaped link, `ctr run` until the container's first output line:
//   - lazy: `obd rpull` of the image converted by `obd convert`, then
//     `ctr run --snapshotter overlaybd` (obd fetches only what the reader reads);
//   - full: `ctr image pull` of the ordinary image (download and unpack with
//     containerd's overlayfs snapshotter), then `ctr run`.
//
// Each includes its pull. Run it with
// go test -run '^$' -bench ColdStart -benchtime 1x ./tests/e2e (as root).
func BenchmarkColdStart(b *testing.B) {
	needRoot(b)
	needContainerd(b)
	b.StopTimer()
	reg := registrytest.New(b)
	reg.PushImage(b, "cold", "plain", coldImage(b))
	if out, err := run(b, 10*time.Minute, bin("obd"), "convert", reg.Ref("cold:plain"), reg.Ref("cold:obd")); err != nil {
		b.Fatalf("obd convert: %v\n%s", err, out)
	}
	link := newColdShaper(b, reg.URL, coldRTT, coldBW)
	plainRef, obdRef := link.host()+"/cold:plain", link.host()+"/cold:obd"

	var lazy, full time.Duration
	var lazyBytes, fullBytes int64
	for i := 0; i < b.N; i++ {
		// A new containerd and obd daemon each round: empty content store and extent cache.
		e := startContainerdEnv(b, map[string]any{"autoRemoveDev": true})

		before := link.blobBytes.Load()
		b.StartTimer()
		start := time.Now()
		if out, err := run(b, 10*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, obdRef); err != nil {
			b.Fatalf("obd rpull: %v\n%s\n%s", err, out, e.logs())
		}
		lazy += e.firstLineAt(b, "run", "--snapshotter", "overlaybd", "--rm", obdRef, "c1").Sub(start)
		lazyBytes += link.blobBytes.Load() - before

		before = link.blobBytes.Load()
		start = time.Now()
		e.mustCtr(b, "image", "pull", "--plain-http", plainRef)
		full += e.firstLineAt(b, "run", "--rm", plainRef, "c2").Sub(start)
		b.StopTimer()
		fullBytes += link.blobBytes.Load() - before
	}
	n := float64(b.N)
	b.ReportMetric(lazy.Seconds()/n, "lazy-s/op")
	b.ReportMetric(full.Seconds()/n, "full-s/op")
	b.ReportMetric(full.Seconds()/lazy.Seconds(), "full/lazy")
	b.ReportMetric(float64(lazyBytes)/n/(1<<20), "lazy-MiB/op")
	b.ReportMetric(float64(fullBytes)/n/(1<<20), "full-MiB/op")
}

// firstLineAt runs ctr with args to its end and returns when the container's
// first output line came; it fails the benchmark unless that line says "ready".
func (e *containerdEnv) firstLineAt(b *testing.B, args ...string) time.Time {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", e.sock, "-n", e.namespace}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	first := ""
	if sc.Scan() {
		first = sc.Text()
	}
	at := time.Now()
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil || !strings.HasPrefix(first, "ready") {
		b.Fatalf("ctr %s: %v, first line %q\n%s\n--- logs:\n%s", strings.Join(args, " "), err, first, stderr.String(), e.logs())
	}
	return at
}

// coldImage is an ordinary image of two gzip layers: /reader (the entrypoint)
// and /data/f000../data/f199 of incompressible random data.
func coldImage(b *testing.B) v1.Image {
	b.Helper()
	reader := buildStaticGo(b, coldReaderSource)
	rng := rand.New(rand.NewChaCha8([32]byte{11}))
	var data bytes.Buffer
	tw := tar.NewWriter(&data)
	mtime := time.Unix(1700000000, 0)
	tw.WriteHeader(&tar.Header{Name: "data/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: mtime})
	buf := make([]byte, coldFileLen)
	for i := 0; i < coldFiles; i++ {
		for j := 0; j < len(buf); j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/f%03d", i), Mode: 0o644, Typeflag: tar.TypeReg, Size: coldFileLen, ModTime: mtime})
		tw.Write(buf)
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	var bin bytes.Buffer
	tw = tar.NewWriter(&bin)
	tw.WriteHeader(&tar.Header{Name: "reader", Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(reader)), ModTime: mtime})
	tw.Write(reader)
	tw.Close()

	img := empty.Image
	for _, raw := range [][]byte{bin.Bytes(), data.Bytes()} {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
			tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			b.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			b.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		b.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"/reader"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		b.Fatal(err)
	}
	return img
}

// coldShaper is a reverse proxy modelling a WAN link to the registry (as
// remote/bench_test.go's shaper): every request waits one round trip before its
// answer starts, and all answer bodies share a bandwidth cap.
type coldShaper struct {
	*httptest.Server
	target    string
	rtt       time.Duration
	bw        float64 // bytes per second
	client    *http.Client
	blobBytes atomic.Int64

	mu   sync.Mutex
	next time.Time // when the link is free again
}

func newColdShaper(b *testing.B, target string, rtt time.Duration, bw float64) *coldShaper {
	s := &coldShaper{target: strings.TrimSuffix(target, "/"), rtt: rtt, bw: bw,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	b.Cleanup(func() { s.Close(); s.client.CloseIdleConnections() })
	return s
}

func (s *coldShaper) host() string { return strings.TrimPrefix(s.URL, "http://") }

// reserve books n bytes on the link and returns when they have gone through.
func (s *coldShaper) reserve(n int) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); s.next.Before(now) {
		s.next = now
	}
	s.next = s.next.Add(time.Duration(float64(n) / s.bw * float64(time.Second)))
	return s.next
}

func waitUntil(ctx context.Context, at time.Time) bool {
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *coldShaper) serve(w http.ResponseWriter, r *http.Request) {
	if !waitUntil(r.Context(), time.Now().Add(s.rtt)) {
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, s.target+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	out.ContentLength = r.ContentLength
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
	buf := make([]byte, 64<<10)
	fl, _ := w.(http.Flusher)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if !waitUntil(r.Context(), s.reserve(n)) {
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
