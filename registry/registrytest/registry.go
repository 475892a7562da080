// Package registrytest provides real HTTP servers on 127.0.0.1 for tests of remote
// images: an OCI registry (go-containerregistry's in-memory registry) with optional
// Basic or token auth and redirects to expiring "blob storage", helpers that push
// OCI layouts and generated overlaybd-looking images into it, and a fault-injecting
// proxy. Other packages' tests (cache, image, end-to-end) use the same servers.
package registrytest

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// Registry is a running test registry.
type Registry struct {
	// Host is "127.0.0.1:<port>"; URL is "http://" + Host.
	Host, URL string
	// Storage is the blob-storage server when redirects are on (WithRedirect).
	Storage *httptest.Server
	// Tokens is the token server when token auth is on (WithTokenAuth).
	Tokens *TokenServer
	// PushCert is the client certificate the Push helpers present to a registry
	// that requires one (WithTLS with client CAs).
	PushCert *tls.Certificate

	server  *httptest.Server
	inner   http.Handler // the ggcr registry, no auth
	scoped  *scopedBlobs // WithRepoScopedBlobs
	cfg     options
	secret  []byte
	credsMu sync.RWMutex
	user    string
	pass    string

	blobGets       atomic.Int64 // GET /v2/<repo>/blobs/<digest> reaching the registry
	storageGets    atomic.Int64
	storageExpired atomic.Int64
}

type options struct {
	basic, token bool
	user, pass   string
	tokenTTL     time.Duration
	redirect     bool
	urlTTL       time.Duration
	tls          bool
	clientCAs    *x509.CertPool
	scoped       bool
}

// Option configures New.
type Option func(*options)

// WithBasicAuth requires HTTP Basic credentials on every /v2/ request.
func WithBasicAuth(user, pass string) Option {
	return func(o *options) { o.basic, o.user, o.pass = true, user, pass }
}

// WithTokenAuth requires bearer tokens from a token server (on its own port) that
// issues them for these Basic credentials; tokens expire after ttl (0: 5 min).
func WithTokenAuth(user, pass string, ttl time.Duration) Option {
	return func(o *options) { o.token, o.user, o.pass, o.tokenTTL = true, user, pass, ttl }
}

// WithRedirect makes blob GETs answer 307 to a storage server on another port,
// with a signed-looking query that stops working (403) urlTTL after it was issued.
// The expiry is in a parameter clients cannot parse, so they learn it from the 403.
func WithRedirect(urlTTL time.Duration) Option {
	return func(o *options) { o.redirect, o.urlTTL = true, urlTTL }
}

// WithTLS serves the registry over HTTPS (httptest's self-signed certificate for
// 127.0.0.1; see CAFile). With clientCAs set, a client certificate signed by one of
// them is required.
func WithTLS(clientCAs *x509.CertPool) Option {
	return func(o *options) { o.tls, o.clientCAs = true, clientCAs }
}

// New starts a registry on 127.0.0.1; t.Cleanup stops it.
func New(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	r := &Registry{secret: []byte(fmt.Sprintf("secret-%d", time.Now().UnixNano()))}
	for _, o := range opts {
		o(&r.cfg)
	}
	r.user, r.pass = r.cfg.user, r.cfg.pass
	r.inner = ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	if r.cfg.scoped {
		r.scoped = newScopedBlobs()
	}
	if r.cfg.token {
		r.Tokens = newTokenServer(r, r.cfg.tokenTTL)
	}
	if r.cfg.redirect {
		r.Storage = httptest.NewServer(http.HandlerFunc(r.serveStorage))
		t.Cleanup(r.Storage.Close)
	}
	r.server = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.server.Config.ErrorLog = log.New(io.Discard, "", 0) // expected TLS handshake failures
	if r.cfg.tls {
		r.server.TLS = &tls.Config{ClientCAs: r.cfg.clientCAs}
		if r.cfg.clientCAs != nil {
			r.server.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		}
		r.server.StartTLS()
	} else {
		r.server.Start()
	}
	t.Cleanup(r.server.Close)
	r.URL = r.server.URL
	r.Host = strings.TrimPrefix(strings.TrimPrefix(r.server.URL, "http://"), "https://")
	if r.Tokens != nil {
		r.Tokens.URL = r.URL + "/token"
	}
	return r
}

// CAFile writes the registry's TLS certificate as PEM into a temporary file and
// returns its path (for Options.CAFile). Only for WithTLS registries.
func (r *Registry) CAFile(t testing.TB) string {
	t.Helper()
	if r.server.Certificate() == nil {
		t.Fatal("registrytest: CAFile on a registry without TLS")
	}
	path := filepath.Join(t.TempDir(), "registry-ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.server.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Credentials returns the user name and password the registry accepts.
func (r *Registry) Credentials() (user, pass string) {
	r.credsMu.RLock()
	defer r.credsMu.RUnlock()
	return r.user, r.pass
}

// SetCredentials changes the accepted credentials (rotation).
func (r *Registry) SetCredentials(user, pass string) {
	r.credsMu.Lock()
	r.user, r.pass = user, pass
	r.credsMu.Unlock()
}

func (r *Registry) checkBasic(req *http.Request) bool {
	u, p, ok := req.BasicAuth()
	user, pass := r.Credentials()
	return ok && u == user && p == pass
}

// BlobGets counts blob GETs that reached the registry (not storage).
func (r *Registry) BlobGets() int64 { return r.blobGets.Load() }

// StorageGets counts requests to the storage server, and StorageExpired those
// refused because their signed URL had expired.
func (r *Registry) StorageGets() int64    { return r.storageGets.Load() }
func (r *Registry) StorageExpired() int64 { return r.storageExpired.Load() }

// BlobURL is the blob URL of digest in repo, as config.v1.json would hold it.
func (r *Registry) BlobURL(repo, digest string) string {
	return r.URL + "/v2/" + repo + "/blobs/" + digest
}

// blobPath splits "/v2/<repo>/blobs/<digest>".
func blobPath(p string) (repo, digest string, ok bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndex(rest, "/blobs/")
	if i <= 0 {
		return "", "", false
	}
	repo, digest = rest[:i], rest[i+len("/blobs/"):]
	if !strings.HasPrefix(digest, "sha256:") {
		return "", "", false // uploads: /blobs/uploads/...
	}
	return repo, digest, true
}

// repoOf extracts the repository of a /v2/<repo>/{blobs,manifests,tags}/... path.
func repoOf(p string) string {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return ""
	}
	for _, sep := range []string{"/blobs/", "/manifests/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(rest, sep); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	if r.Tokens != nil && req.URL.Path == "/token" {
		r.Tokens.serve(w, req)
		return
	}
	if !r.authorized(w, req) {
		return
	}
	if r.scoped != nil && r.serveScoped(w, req) {
		return
	}
	repo, digest, isBlob := blobPath(req.URL.Path)
	if isBlob && req.Method == http.MethodGet {
		r.blobGets.Add(1)
		if r.cfg.redirect {
			http.Redirect(w, req, r.signedURL(repo, digest), http.StatusTemporaryRedirect)
			return
		}
	}
	r.inner.ServeHTTP(w, req)
}

// authorized enforces the configured auth, writing the 401 challenge itself.
func (r *Registry) authorized(w http.ResponseWriter, req *http.Request) bool {
	switch {
	case r.cfg.basic:
		if r.checkBasic(req) {
			return true
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="registrytest"`)
	case r.cfg.token:
		repo := repoOf(req.URL.Path)
		tok, _ := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
		if r.Tokens.valid(tok, repo) {
			return true
		}
		action := "pull"
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			action = "push,pull"
		}
		ch := fmt.Sprintf(`Bearer realm="%s",service="registrytest"`, r.Tokens.URL)
		if repo != "" {
			ch += fmt.Sprintf(`,scope="repository:%s:%s"`, repo, action)
		}
		w.Header().Set("WWW-Authenticate", ch)
	default:
		return true
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
	return false
}

func (r *Registry) sign(repo, digest, exp string) string {
	m := hmac.New(sha256.New, r.secret)
	fmt.Fprintf(m, "%s\n%s\n%s", repo, digest, exp)
	return hex.EncodeToString(m.Sum(nil))
}

func (r *Registry) signedURL(repo, digest string) string {
	exp := strconv.FormatInt(time.Now().Add(r.cfg.urlTTL).UnixMilli(), 10)
	q := url.Values{"exp": {exp}, "sig": {r.sign(repo, digest, exp)}}
	return r.Storage.URL + "/storage/" + repo + "/" + digest + "?" + q.Encode()
}

// serveStorage checks the signature and expiry, then serves the blob bytes (with
// Range support) from the registry's store.
func (r *Registry) serveStorage(w http.ResponseWriter, req *http.Request) {
	r.storageGets.Add(1)
	p, _ := strings.CutPrefix(req.URL.Path, "/storage/")
	i := strings.LastIndex(p, "/")
	if i <= 0 {
		http.NotFound(w, req)
		return
	}
	repo, digest := p[:i], p[i+1:]
	exp := req.URL.Query().Get("exp")
	if !hmac.Equal([]byte(req.URL.Query().Get("sig")), []byte(r.sign(repo, digest, exp))) {
		http.Error(w, "<Error><Code>SignatureDoesNotMatch</Code></Error>", http.StatusForbidden)
		return
	}
	ms, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || time.Now().UnixMilli() > ms {
		r.storageExpired.Add(1)
		http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
		return
	}
	in := req.Clone(req.Context())
	in.URL.Path = "/v2/" + repo + "/blobs/" + digest
	in.URL.RawQuery = ""
	in.RequestURI = ""
	in.Header.Del("Authorization")
	r.inner.ServeHTTP(w, in)
}

// ServeOn serves the registry on l as well (e.g. a non-loopback address in a
// network namespace), over TLS with the same certificate if the registry uses
// TLS. It returns l's "host:port"; t.Cleanup stops it.
func (r *Registry) ServeOn(t testing.TB, l net.Listener) string {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(r.serve), ErrorLog: log.New(io.Discard, "", 0)}
	if r.cfg.tls {
		srv.TLSConfig = r.server.TLS.Clone()
		go srv.ServeTLS(l, "", "")
	} else {
		go srv.Serve(l)
	}
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}
