package registrytest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// CountingProxy forwards every request to a registry and counts the blob GETs
// and the blob bytes it sends back: what a client really took from the
// registry. Closing it is "the registry is down".
type CountingProxy struct {
	*httptest.Server
	blobGets, blobBytes atomic.Int64
}

// NewCountingProxy starts a CountingProxy for the registry at target (a URL).
func NewCountingProxy(t testing.TB, target string) *CountingProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("registrytest: %v", err)
	}
	p := &CountingProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if isBlobGet(resp.Request) {
			resp.Body = &countingBody{resp.Body, &p.blobBytes}
		}
		return nil
	}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isBlobGet(r) {
			p.blobGets.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

// BlobGets is the number of blob GET requests received so far.
func (p *CountingProxy) BlobGets() int64 { return p.blobGets.Load() }

// BlobBytes is the number of blob body bytes sent so far.
func (p *CountingProxy) BlobBytes() int64 { return p.blobBytes.Load() }

// Host is the proxy's host:port, to build references from.
func (p *CountingProxy) Host() string { return strings.TrimPrefix(p.URL, "http://") }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
