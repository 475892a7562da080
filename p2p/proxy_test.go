package p2p_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry/registrytest"
)

// seen is what a fake proxy was asked.
type seen struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (s *seen) add(r *http.Request) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r.Clone(r.Context()))
	s.mu.Unlock()
}

func (s *seen) all() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.reqs...)
}

// forward sends r to target with its Range and Authorization and copies the answer.
func forward(w http.ResponseWriter, r *http.Request, target string) {
	out, err := http.NewRequestWithContext(r.Context(), http.MethodGet, target, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, h := range []string{"Range", "Authorization"} {
		if v := r.Header.Get(h); v != "" {
			out.Header.Set(h, v)
		}
	}
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// TestURLPrefixProxy: the reference's contract. Data requests arrive as
// <address>/<resolved URL> with Range (and, to the registry itself, its
// Authorization); token and redirect resolution go direct. Both registry modes:
// Self (token auth) and Redirect (blob storage).
func TestURLPrefixProxy(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []registrytest.Option
	}{
		{"self", []registrytest.Option{registrytest.WithTokenAuth("u", "p", 0)}},
		{"redirect", []registrytest.Option{registrytest.WithRedirect(time.Hour)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := registrytest.New(t, tc.opts...)
			if reg.Tokens != nil {
				t.Setenv("DOCKER_CONFIG", dockerConfig(t, reg.Host, "u", "p"))
			}
			data := randomData(2, 6<<20)
			l := pushBlob(t, reg, "px/app", data)
			var s seen
			px := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s.add(r)
				target, ok := strings.CutPrefix(r.URL.RequestURI(), "/dadip2p/")
				if !ok {
					http.NotFound(w, r)
					return
				}
				forward(w, r, target)
			}))
			defer px.Close()
			m := p2p.NewMetrics()
			op := newOpener(t, t.TempDir(), config.P2PConfig{Enable: true, Address: strings.TrimPrefix(px.URL, "http://") + "/dadip2p"}, m)
			b := openBlob(t, op, reg.BlobURL("px/app", l.Digest), l)
			spans, _ := scattered(3, int64(len(data)), 24)
			if f := readAll(t, b, data, spans, 4, nil); f != 0 {
				t.Fatalf("%d reads failed", f)
			}
			reqs := s.all()
			if len(reqs) == 0 {
				t.Fatal("no request reached the proxy")
			}
			for _, r := range reqs {
				target := strings.TrimPrefix(r.URL.RequestURI(), "/dadip2p/")
				if !strings.HasPrefix(target, "http://") || !strings.Contains(target, l.Digest) {
					t.Errorf("proxy asked for %q: want /dadip2p/<blob URL>", r.URL.RequestURI())
				}
				if !strings.HasPrefix(r.Header.Get("Range"), "bytes=") {
					t.Errorf("proxy request %s without Range", target)
				}
				if tc.name == "self" && !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
					t.Errorf("Self mode: proxy request %s without the registry's Authorization", target)
				}
				if tc.name == "redirect" && (strings.HasPrefix(target, reg.URL) || r.Header.Get("Authorization") != "") {
					t.Errorf("Redirect mode: proxy asked for %s (auth %q); want the storage URL without auth", target, r.Header.Get("Authorization"))
				}
			}
			if got := value(m.Bytes.WithLabelValues("proxy")); got < float64(len(spans)) {
				t.Errorf("proxy bytes counter %v", got)
			}
		})
	}
}

// dockerConfig writes a docker config.json with credentials for host.
func dockerConfig(t testing.TB, host, user, pass string) string {
	t.Helper()
	dir := t.TempDir()
	auth := base64(user + ":" + pass)
	writeFile(t, dir+"/config.json", `{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`)
	return dir
}

// fakeDragonfly is a dfdaemon-style forward proxy: it serves absolute-form
// requests from their targets and, while failing is set, answers like a
// dfdaemon whose P2P download failed.
type fakeDragonfly struct {
	*httptest.Server
	seen    seen
	failing atomic.Bool
	served  atomic.Int64
}

func newFakeDragonfly(t testing.TB) *fakeDragonfly {
	f := &fakeDragonfly{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.seen.add(r)
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		if f.failing.Load() {
			w.Header().Set(p2p.HeaderDragonflyErrorType, "proxy")
			http.Error(w, "peer task failed", http.StatusInternalServerError)
			return
		}
		f.served.Add(1)
		forward(w, r, r.URL.String())
	}))
	t.Cleanup(f.Close)
	return f
}

// TestDragonfly: headers sent as dfdaemon expects; an injected
// X-Dragonfly-Error-Type answer falls back to the registry (counted), with every
// byte still right; a dead dfdaemon likewise.
func TestDragonfly(t *testing.T) {
	reg := registrytest.New(t)
	front := registrytest.NewCountingProxy(t, reg.URL)
	data := randomData(4, 8<<20)
	l := pushBlob(t, reg, "df/app", data)
	blobURL := front.URL + "/v2/df/app/blobs/" + l.Digest
	df := newFakeDragonfly(t)
	m := p2p.NewMetrics()
	op := newOpener(t, t.TempDir(), config.P2PConfig{Enable: true, Mode: config.P2PModeDragonfly,
		Address: strings.TrimPrefix(df.URL, "http://")}, m)
	b := openBlob(t, op, blobURL, l)

	spans, _ := scattered(5, int64(len(data))/2, 16) // first half
	if f := readAll(t, b, data, spans, 4, nil); f != 0 {
		t.Fatalf("%d reads failed", f)
	}
	if df.served.Load() == 0 {
		t.Fatal("dfdaemon served nothing")
	}
	for _, r := range df.seen.all() {
		if r.Header.Get(p2p.HeaderDragonflyUseP2P) != "true" || r.Header.Get(p2p.HeaderDragonflyPriority) == "" {
			t.Errorf("request %s: %s=%q %s=%q", r.URL, p2p.HeaderDragonflyUseP2P, r.Header.Get(p2p.HeaderDragonflyUseP2P),
				p2p.HeaderDragonflyPriority, r.Header.Get(p2p.HeaderDragonflyPriority))
		}
		if !strings.HasPrefix(r.URL.String(), front.URL+"/v2/df/app/blobs/") || !strings.HasPrefix(r.Header.Get("Range"), "bytes=") {
			t.Errorf("proxied %s with Range %q", r.URL, r.Header.Get("Range"))
		}
	}
	if value(m.Bytes.WithLabelValues("proxy")) == 0 {
		t.Error("no proxy bytes counted")
	}

	// dfdaemon reports its own failure: reads go direct, counted, and right.
	df.failing.Store(true)
	direct := front.BlobGets()
	spans2 := make([]span, 0, 16)
	for _, s := range spans {
		spans2 = append(spans2, span{s.off + int64(len(data))/2, s.n}) // second half: not cached
	}
	if f := readAll(t, b, data, spans2, 4, nil); f != 0 {
		t.Fatalf("%d reads failed with dfdaemon failing", f)
	}
	if fb := value(m.Fallbacks.WithLabelValues("proxy", "registry")); fb == 0 {
		t.Error("no fallback counted")
	}
	if front.BlobGets() == direct {
		t.Error("the registry saw no direct request")
	}
	if value(m.Bytes.WithLabelValues("registry")) == 0 {
		t.Error("no registry bytes counted")
	}
}

// TestProxyDown: a proxy that is not listening costs one failed connect, then
// reads go direct while it is down; no read fails, no retry budget is spent.
func TestProxyDown(t *testing.T) {
	reg := registrytest.New(t)
	data := randomData(6, 4<<20)
	l := pushBlob(t, reg, "down/app", data)
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	m := p2p.NewMetrics()
	op := newOpener(t, t.TempDir(), config.P2PConfig{Enable: true, Address: addr + "/dadip2p"}, m)
	b := openBlob(t, op, reg.BlobURL("down/app", l.Digest), l)
	spans, _ := scattered(9, int64(len(data)), 16)
	if f := readAll(t, b, data, spans, 4, nil); f != 0 {
		t.Fatalf("%d reads failed", f)
	}
	if got := value(m.Bytes.WithLabelValues("registry")); got == 0 {
		t.Error("no registry bytes counted")
	}
	if value(m.Bytes.WithLabelValues("proxy")) != 0 {
		t.Error("bytes counted from a dead proxy")
	}
}
