package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
	"go.uber.org/zap"
)

var allFaults = []registrytest.Fault{registrytest.Status500, registrytest.Status503, registrytest.TooManyRequests,
	registrytest.ResetMidBody, registrytest.TruncateBody, registrytest.FlipBit, registrytest.WrongContentRange,
	registrytest.LongBody, registrytest.ShortBody, registrytest.ChangedBlob}

// everyThird applies f to every third blob request, at most twice (so that a
// refetch is not faulted again by construction). Corrupting faults hit only the
// first request for a unit holding only compressed blocks (blockUnit): the legacy ZFile header, trailer and jump table of the base layer
// have no checksum, so corrupting them fails the open (an error; the all-
// variants cover that) rather than being healed.
const baseLayer = "c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9"

// blockUnit says whether blob bytes [first, last] hold only ZFile blocks: base
// layer 256 KiB..3 MiB (of 4.5 MiB), hello layer 256..512 KiB (its jump table
// starts at 569,127).
func blockUnit(path string, first, last int64) bool {
	if strings.Contains(path, baseLayer) {
		return first >= 256<<10 && last < 3<<20
	}
	return strings.Contains(path, helloLayer) && first >= 256<<10 && last < 512<<10
}

func everyThird(f registrytest.Fault) registrytest.Plan {
	var seen, injected atomic.Int64
	return func(_ int64, r *http.Request) registrytest.Fault {
		if corrupting(f) {
			var first, last int64
			if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err != nil ||
				!blockUnit(r.URL.Path, first, last) || injected.Load() >= 1 {
				return registrytest.None
			}
		} else if seen.Add(1)%3 != 0 || injected.Load() >= 2 {
			return registrytest.None
		}
		injected.Add(1)
		return f
	}
}

func corrupting(f registrytest.Fault) bool {
	return f == registrytest.FlipBit || f == registrytest.ChangedBlob
}

// attach opens cfg through op and reads rs; it returns the failed reads.
func attach(t *testing.T, op image.RemoteOpener, cfg *config.ImageConfig, rs []region, parallel int) (int, error) {
	t.Helper()
	im, err := image.Open(context.Background(), cfg, image.Options{Remote: op, Logger: zap.NewNop()})
	if err != nil {
		return len(rs), err
	}
	defer im.Close()
	return readRegions(t, im, rs, parallel)
}

// The real two-layer stack read through the cache from a registry behind a
// proxy that injects each fault into every third blob request (every fault
// is then recovered: retries, or the ZFile CRC → Evict → refetch path), and
// into every request (reads fail, never return wrong bytes, and the number of
// requests stays bounded).
func TestImageFaults(t *testing.T) {
	blobs := stackBlobs(t)
	rs := regions(t, truth(t, blobs))
	reg := registrytest.New(t)
	cfgAt := pushStack(t, reg, "stack", blobs)
	p := registrytest.NewFaultProxy(t, reg.URL)
	cfg := cfgAt(p.URL)
	units := 0
	for _, b := range blobs {
		units += (len(b) + cache.DefaultRefillSize - 1) / cache.DefaultRefillSize
	}
	// Every unit fetched at most 1+MaxRefetches times, each fetch at most
	// MaxAttempts requests, plus the open probes.
	bound := int64(units*(1+cache.DefaultMaxRefetches)*fastRetry.MaxAttempts + 2*fastRetry.MaxAttempts)

	run := func(t *testing.T, plan registrytest.Plan, mustSucceed bool, dir string) *recorder {
		base := runtime.NumGoroutine()
		p.SetPlan(plan)
		// One unit per request and no read-ahead: many requests to fault.
		op := &recorder{Opener: newOpener(t, dir, cache.Options{MaxFetchSize: cache.DefaultRefillSize, ReadAhead: -1})}
		failed, err := attach(t, op, cfg, rs, 4)
		op.Close()
		if mustSucceed && failed > 0 {
			t.Errorf("%d of %d reads failed: %v", failed, len(rs), err)
		}
		if n := p.Matched(); n > bound {
			t.Errorf("%d blob requests, bound %d", n, bound)
		}
		t.Logf("%d/%d reads failed, %d blob requests, stats %+v (first error: %v)", failed, len(rs), p.Matched(), op.stats(), err)
		settleGoroutines(t, base)
		return op
	}
	t.Run("clean-latency", func(t *testing.T) {
		p.SetLatency(5e6)
		defer p.SetLatency(0)
		run(t, nil, true, t.TempDir())
	})
	for _, f := range allFaults {
		t.Run("some-"+f.String(), func(t *testing.T) {
			dir := t.TempDir()
			// Corrupt bytes may fail reads of this attach: after one bad unit
			// fetch, the ZFile reader evicts the unit again for every bad block
			// it still holds from that fetch, spending the unit's refetch budget
			// (a known limitation, see the report). They never return wrong
			// bytes, and the next attach reads everything.
			op := run(t, everyThird(f), !corrupting(f), dir)
			if p.Injected(f) == 0 {
				t.Fatalf("no %v injected", f)
			}
			if f == registrytest.ChangedBlob {
				// Framing is intact: only the ZFile CRC can catch it, and the
				// cache must have dropped and refetched the bad unit.
				if st := op.stats(); st.Refetches == 0 {
					t.Errorf("%v injected %d times but no refetch: %+v", f, p.Injected(f), st)
				}
			}
			if corrupting(f) {
				run(t, nil, true, dir) // healed
			}
		})
		t.Run("all-"+f.String(), func(t *testing.T) {
			run(t, registrytest.Always(f), false, t.TempDir())
		})
	}
}

// Layers of a generated multi-layer image read through Opener.OpenBlob behind
// faults the registry client detects by itself (the blobs are random bytes, so
// no CRC layer is there to catch flipped bits; with ETags on, a changed blob is
// detected by the client).
func TestGeneratedImageFaults(t *testing.T) {
	g := registrytest.OverlaybdImage(t, 9, 3<<20+17, 1<<20, 700<<10)
	reg := registrytest.New(t)
	reg.PushImage(t, "gen", "v1", g.Image)
	p := registrytest.NewFaultProxy(t, reg.URL)
	p.SetETags(true)
	ls, err := g.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	faults := []registrytest.Fault{registrytest.Status500, registrytest.Status503, registrytest.TooManyRequests,
		registrytest.ResetMidBody, registrytest.TruncateBody, registrytest.WrongContentRange, registrytest.LongBody,
		registrytest.ShortBody, registrytest.IgnoreRange}
	for _, f := range faults {
		t.Run(f.String(), func(t *testing.T) {
			base := runtime.NumGoroutine()
			p.SetPlan(everyThird(f))
			op := newOpener(t, t.TempDir(), cache.Options{})
			for j, l := range ls {
				d, _ := l.Digest()
				want := g.Blobs[j]
				b, err := op.OpenBlob(context.Background(), p.URL+"/v2/gen/blobs/"+d.String(), config.Layer{Digest: d.String(), Size: uint64(len(want))})
				if err != nil {
					t.Fatalf("layer %d: %v", j, err)
				}
				got := make([]byte, len(want))
				if _, err := b.ReadAt(got, 0); err != nil {
					t.Errorf("layer %d: %v", j, err)
				} else if !bytes.Equal(got, want) {
					t.Errorf("layer %d: WRONG BYTES", j)
				}
				b.Close()
			}
			op.Close()
			if p.Injected(f) == 0 {
				t.Errorf("no %v injected", f)
			}
			maxReq := int64(0)
			for _, b := range g.Blobs {
				maxReq += int64((len(b)+cache.DefaultRefillSize-1)/cache.DefaultRefillSize+1) * int64(fastRetry.MaxAttempts)
			}
			if p.Matched() > maxReq {
				t.Errorf("%d blob requests, bound %d", p.Matched(), maxReq)
			}
			settleGoroutines(t, base)
		})
	}
}

// warm fills the cache with every byte of every blob of cfg.
func warm(t *testing.T, op *Opener, cfg *config.ImageConfig) {
	t.Helper()
	for _, l := range cfg.Lowers {
		u, _ := cfg.BlobURL(l.Digest)
		b, err := op.OpenBlob(context.Background(), u, l)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.ReadAt(make([]byte, l.Size), 0); err != nil {
			t.Fatal(err)
		}
		b.Close()
		if !op.cache.Complete(l.Digest, int64(l.Size)) {
			t.Fatalf("%s not complete after reading it whole", l.Digest)
		}
	}
}

// A second attach from a warm cache makes no blob request at all, and works with
// the registry down.
func TestWarmAttachRegistryDown(t *testing.T) {
	blobs := stackBlobs(t)
	rs := regions(t, truth(t, blobs))
	reg := registrytest.New(t)
	front := registrytest.NewCountingProxy(t, reg.URL)
	cfg := pushStack(t, reg, "stack", blobs)(front.URL)
	dir := t.TempDir()

	op := newOpener(t, dir, cache.Options{})
	warm(t, op, cfg)
	op.Close()
	before := front.BlobGets()
	if before == 0 {
		t.Fatal("warming made no blob request")
	}

	op = newOpener(t, dir, cache.Options{})
	if failed, err := attach(t, op, cfg, rs, 4); failed > 0 {
		t.Fatalf("warm attach: %d reads failed: %v", failed, err)
	}
	op.Close()
	if n := front.BlobGets() - before; n != 0 {
		t.Fatalf("warm attach made %d blob requests; want 0", n)
	}

	front.Close() // the registry is down
	op = newOpener(t, dir, cache.Options{})
	defer op.Close()
	if failed, err := attach(t, op, cfg, rs, 4); failed > 0 {
		t.Fatalf("warm attach with the registry down: %d reads failed: %v", failed, err)
	}
	// Every byte of every blob, too.
	for i, l := range cfg.Lowers {
		u, _ := cfg.BlobURL(l.Digest)
		b, err := op.OpenBlob(context.Background(), u, l)
		if err != nil {
			t.Fatalf("layer %d with the registry down: %v", i, err)
		}
		got := make([]byte, l.Size)
		if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, blobs[i]) {
			t.Errorf("layer %d with the registry down: wrong bytes or %v", i, err)
		}
		b.Close()
	}
	// A cold blob, by contrast, needs the registry: the probe fails at open.
	cold := config.Layer{Digest: "sha256:" + strings.Repeat("0", 64), Size: 100}
	u, _ := cfg.BlobURL(cold.Digest)
	if b, err := op.OpenBlob(context.Background(), u, cold); err == nil {
		b.Close()
		t.Error("a blob not in the cache opened with the registry down")
	}
}

// Cache data damaged between two attaches is caught by the cache's page CRCs and
// refetched: the second attach still returns the true bytes.
func TestCorruptCacheBetweenAttaches(t *testing.T) {
	blobs := stackBlobs(t)
	rs := regions(t, truth(t, blobs))
	reg := registrytest.New(t)
	front := registrytest.NewCountingProxy(t, reg.URL)
	cfg := pushStack(t, reg, "stack", blobs)(front.URL)
	dir := t.TempDir()
	op := newOpener(t, dir, cache.Options{})
	warm(t, op, cfg)
	op.Close()

	files, _ := filepath.Glob(filepath.Join(dir, "*.data"))
	if len(files) != len(blobs) {
		t.Fatalf("%d cache data files, want %d", len(files), len(blobs))
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); off += 64 << 10 {
			data[off+100] ^= 0xff // a byte in every 64 KiB: every unit is damaged
		}
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := front.BlobGets()
	rec := &recorder{Opener: newOpener(t, dir, cache.Options{})}
	defer rec.Close()
	if failed, err := attach(t, rec, cfg, rs, 4); failed > 0 {
		t.Fatalf("attach over a damaged cache: %d reads failed: %v", failed, err)
	}
	st := rec.stats()
	if st.ChecksumFailures == 0 || front.BlobGets() == before {
		t.Fatalf("damaged cache served without refetching: stats %+v, %d requests", st, front.BlobGets()-before)
	}
	t.Logf("stats %+v, %d blob requests", st, front.BlobGets()-before)
}

func TestOptionsFromGlobalCredentials(t *testing.T) {
	parse := func(js string) (Options, error) {
		g, err := config.ParseGlobalConfig([]byte(js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		return OptionsFromGlobal(g)
	}
	for _, tc := range []struct{ js, mode, path string }{
		{`{"credentialConfig":{"mode":"http","path":"http://127.0.0.1:9/auth","timeout":3}}`, "http", "http://127.0.0.1:9/auth"},
		{`{"credentialConfig":{"mode":"https","path":"https://127.0.0.1:9/auth"}}`, "https", "https://127.0.0.1:9/auth"},
		{`{"credentialConfig":{"mode":"uds","path":"/run/cred.sock"}}`, "uds", "/run/cred.sock"},
	} {
		o, err := parse(tc.js)
		if err != nil {
			t.Fatalf("%s: %v", tc.js, err)
		}
		cs := o.Registry.CredentialService
		if cs == nil || cs.Mode != tc.mode || cs.Path != tc.path {
			t.Fatalf("%s: CredentialService %+v", tc.js, cs)
		}
		if tc.mode == "http" && cs.Timeout.Seconds() != 3 {
			t.Errorf("timeout %v, want 3s", cs.Timeout)
		}
		if o.Registry.CredentialFile != "" {
			t.Errorf("%s: credential file %q set too", tc.js, o.Registry.CredentialFile)
		}
	}
	// The service's TLS files are passed on (and checked at startup).
	_, err := parse(`{"credentialConfig":{"mode":"https","path":"https://127.0.0.1:9/auth","server_ca_path":"/nonexistent/ca.pem"}}`)
	if err == nil || !strings.Contains(err.Error(), "server_ca_path") {
		t.Errorf("missing server CA: %v", err)
	}
	// A URL of the wrong scheme for the mode is refused.
	if _, err := parse(`{"credentialConfig":{"mode":"http","path":"/run/cred.sock"}}`); err == nil {
		t.Error("http mode with a socket path accepted")
	}
	// A mode without a path means no credentials.
	o, err := parse(`{"credentialConfig":{"mode":"uds"}}`)
	if err != nil || o.Registry.CredentialService != nil {
		t.Errorf("uds without a path: %+v, %v", o.Registry.CredentialService, err)
	}
	// The keychain built from these options asks the service.
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.Write([]byte(`{"success":true,"data":{"auths":{"reg.example:5000":{"username":"u","password":"p"}}}}`))
	}))
	defer srv.Close()
	o, err = parse(`{"credentialConfig":{"mode":"http","path":"` + srv.URL + `/auth"}}`)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := o.Registry.CredentialService.Keychain()
	if err != nil {
		t.Fatal(err)
	}
	repo, err := name.NewRepository("reg.example:5000/team/app")
	if err != nil {
		t.Fatal(err)
	}
	a, err := kc.Resolve(repo)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := a.Authorization()
	if err != nil || ac.Username != "u" || ac.Password != "p" || asked.Load() == 0 {
		t.Fatalf("credentials from the service: %+v, %v (%d requests)", ac, err, asked.Load())
	}
	if _, err := registry.NewClient(o.Registry); err != nil {
		t.Fatal(err)
	}
}

// A blob the cache holds only part of opens without a request too: what is
// cached reads back with the registry down, what is not fails (EIO upstream).
func TestPartlyCachedBlobOpensOffline(t *testing.T) {
	blobs := stackBlobs(t)
	reg := registrytest.New(t)
	front := registrytest.NewCountingProxy(t, reg.URL)
	cfg := pushStack(t, reg, "stack", blobs)(front.URL)
	dir := t.TempDir()
	l := cfg.Lowers[0]
	u, _ := cfg.BlobURL(l.Digest)
	co := cache.Options{ReadAhead: -1}

	op := newOpener(t, dir, co)
	b, err := op.OpenBlob(context.Background(), u, l)
	if err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 4096)
	if _, err := b.ReadAt(part, 0); err != nil || !bytes.Equal(part, blobs[0][:4096]) {
		t.Fatalf("first read: %v", err)
	}
	b.Close()
	op.Close()
	// A cold open fetches the blob's head and tail: its middle stays uncached.
	mid := int64(l.Size) / 2
	if mid < openHead+cache.DefaultRefillSize || mid+4096 > int64(l.Size)-openTail(int64(l.Size))-cache.DefaultRefillSize {
		t.Fatalf("layer 0 is %d bytes: too small for an uncached unit", l.Size)
	}

	before := front.BlobGets()
	front.Close() // the registry is down
	op = newOpener(t, dir, co)
	defer op.Close()
	b, err = op.OpenBlob(context.Background(), u, l)
	if err != nil {
		t.Fatalf("partly cached blob with the registry down: %v", err)
	}
	defer b.Close()
	if _, err := b.ReadAt(part, 0); err != nil || !bytes.Equal(part, blobs[0][:4096]) {
		t.Fatalf("cached range with the registry down: %v", err)
	}
	if _, err := b.ReadAt(part, mid); err == nil {
		t.Fatal("an uncached range read without the registry")
	}
	if n := front.BlobGets() - before; n != 0 {
		t.Fatalf("%d blob requests reached the closed front", n)
	}
}
