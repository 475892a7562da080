package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/obd-project/obd/registry/registrytest"
)

type basicKeychain struct{ user, pass string }

func (k basicKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

// TestHandshakeOnePing: resolving an image on a fresh client pings the
// registry (GET /v2/) once, not once to learn the scheme and once more for the
// auth challenge: every ping is a round trip of a cold start. Anonymous and
// basic auth (a token realm is checked against the registry's own host, which
// the counting proxy in front is not).
func TestHandshakeOnePing(t *testing.T) {
	for _, mode := range []string{"anonymous", "basic"} {
		t.Run(mode, func(t *testing.T) {
			var opts []registrytest.Option
			switch mode {
			case "basic":
				opts = append(opts, registrytest.WithBasicAuth("alice", "s3cret"))
			}
			reg := registrytest.New(t, opts...)
			reg.PushLayout(t, goldenLayout, "library/hello-world")
			u, _ := url.Parse(reg.URL)
			rp := httputil.NewSingleHostReverseProxy(u)
			var pings atomic.Int64
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					pings.Add(1)
				}
				rp.ServeHTTP(w, r)
			}))
			defer front.Close()
			c := testClient(t, Options{Keychain: basicKeychain{"alice", "s3cret"}})
			im, err := c.Resolve(context.Background(), strings.TrimPrefix(front.URL, "http://")+"/library/hello-world:amd64-converted")
			if err != nil {
				t.Fatal(err)
			}
			if want := front.URL + "/v2/library/hello-world/blobs"; im.RepoBlobURL != want {
				t.Errorf("RepoBlobURL %s, want %s (the scheme the ping was answered on)", im.RepoBlobURL, want)
			}
			if n := pings.Load(); n != 1 {
				t.Errorf("%d pings for one resolve, want 1", n)
			}
		})
	}
}
