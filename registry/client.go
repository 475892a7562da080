// Package registry is the network side of remote OverlayBD images: it resolves
// image references to their overlaybd layer lists (for config.v1.json) and reads
// blob ranges from OCI registries with authentication, redirects to blob storage,
// bounded retries and strict range checking.
//
// A Blob never returns bytes other than the exact range asked for, as far as HTTP
// framing can tell (Content-Range, lengths, ETag). It cannot detect bytes corrupted
// in flight under a consistent framing (a flipped bit, a blob replaced by another of
// the same size): the ZFile block CRCs and the blob digest check above it do.
//
// Typical use, one Client per process:
//
//	c, _ := registry.NewClient(registry.Options{CredentialFile: "/opt/overlaybd/cred.json"})
//	im, _ := c.Resolve(ctx, "registry.example/app:v1-obd") // ErrNotOverlaybd for plain images
//	// config.v1.json: repoBlobUrl = im.RepoBlobURL, lowers = im.Lowers()
//	b, _ := c.OpenBlob(ctx, im.BlobURL(im.Layers[0].Digest), im.Layers[0].Size)
//	n, err := b.ReadAt(p, off) // errors.Is(err, registry.ErrUnavailable): EIO for this range
//
// Errors wrap ErrUnavailable (retry budget spent), ErrNotFound, ErrUnauthorized,
// ErrBadResponse or ErrNotOverlaybd.
package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/obd-project/obd/internal/blobio"
)

// Client holds what the requests of many images and blobs share: the keep-alive
// connection pools, TLS settings and per-repository auth transports (with their
// bearer tokens). Safe for concurrent use; make one per process.
type Client struct {
	opts     Options
	keychain authn.Keychain
	verify   *http.Transport // verified TLS
	noVerify *http.Transport // for InsecureSkipVerify hosts
	plain    map[string]bool
	skip     map[string]bool

	mu   sync.Mutex
	auth map[string]*authEntry // by scheme://host/repo
}

type authEntry struct {
	mu     sync.Mutex
	rt     http.RoundTripper // nil until a handshake succeeds
	scheme string            // what the registry answered on: http or https
}

// NewClient builds a Client. It fails only on unreadable TLS files.
func NewClient(opts Options) (*Client, error) {
	o := opts.withDefaults()
	c := &Client{opts: o, plain: map[string]bool{}, skip: map[string]bool{}, auth: map[string]*authEntry{}}
	for _, h := range o.PlainHTTP {
		c.plain[strings.ToLower(h)] = true
	}
	for _, h := range o.InsecureSkipVerify {
		c.skip[strings.ToLower(h)] = true
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("registry CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("registry CA file %s: no PEM certificate found", o.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	if o.CertFile != "" || o.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("registry client certificate (%s, %s): %w", o.CertFile, o.KeyFile, err)
		}
		tlsConf.Certificates = []tls.Certificate{cert}
	}
	c.verify = c.newTransport(tlsConf)
	skipConf := tlsConf.Clone()
	skipConf.InsecureSkipVerify = true
	c.noVerify = c.newTransport(skipConf)

	kc, err := Keychain(o)
	if err != nil {
		return nil, err
	}
	c.keychain = kc
	return c, nil
}

func (c *Client) newTransport(tlsConf *tls.Config) *http.Transport {
	o := c.opts
	d := &net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   o.TLSHandshakeTimeout,
		ResponseHeaderTimeout: o.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          8 * o.MaxIdleConnsPerHost,
		MaxIdleConnsPerHost:   o.MaxIdleConnsPerHost,
		IdleConnTimeout:       90 * time.Second,
	}
}

// Close drops idle keep-alive connections. Open Blobs keep working (they dial
// again); close them first to release everything.
func (c *Client) Close() {
	c.verify.CloseIdleConnections()
	c.noVerify.CloseIdleConnections()
}

// RoundTrip is the innermost transport of every request the Client makes: it
// refuses plain HTTP to hosts not allowed it, sets the User-Agent, picks the TLS
// settings of the host and reports to the Observer.
func (c *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	host := strings.ToLower(req.URL.Host)
	switch req.URL.Scheme {
	case "https":
	case "http":
		if !c.plainAllowed(host) {
			closeBody(req)
			return nil, fmt.Errorf("%w to %s: not a loopback host and not an insecure registry", errPlainHTTP, req.URL.Host)
		}
	default:
		closeBody(req)
		return nil, fmt.Errorf("unsupported URL scheme %q", req.URL.Scheme)
	}
	r := req.Clone(req.Context())
	r.Header.Set("User-Agent", c.opts.UserAgent)
	t := c.verify
	if c.skip[host] || c.skip[hostOnly(host)] {
		t = c.noVerify
	}
	start := time.Now()
	var resp *http.Response
	var err error
	if in, data := dataRequestIntent(req); data && c.opts.DataProxy != nil {
		resp, err = c.opts.DataProxy.RoundTrip(r, t, in)
	} else {
		resp, err = t.RoundTrip(r)
	}
	if obs := c.opts.Observer; obs != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		obs.Request(req.URL.Host, status, time.Since(start))
	}
	if err == nil && strings.Contains(req.URL.Path, "/manifests/") {
		return limitManifest(req, resp)
	}
	return resp, err
}

// dataKey marks a request context with the URL of the blob data request made
// under it and the read's intent; only that exact URL goes to the DataProxy, not
// the token requests or redirect hops made with the same context. The context is
// the only way through http.Client and ggcr's auth transport to RoundTrip; it
// stays inside this package: the DataProxy gets the intent as an argument.
type dataKey struct{}

type dataRequest struct {
	url string
	in  blobio.Intent
}

func withDataRequest(ctx context.Context, u string, in blobio.Intent) context.Context {
	return context.WithValue(ctx, dataKey{}, dataRequest{u, in})
}

// dataRequestIntent reports whether req is a blob data request, and its intent.
func dataRequestIntent(req *http.Request) (blobio.Intent, bool) {
	d, _ := req.Context().Value(dataKey{}).(dataRequest)
	return d.in, d.url != "" && d.url == req.URL.String()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

func (c *Client) plainAllowed(host string) bool {
	host = strings.ToLower(host)
	return isLoopback(host) || c.plain[host] || c.plain[hostOnly(host)]
}

// hostOnly strips the port of host[:port] (and the brackets of an IPv6 literal).
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

func isLoopback(host string) bool {
	h := hostOnly(host)
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// repository names host/repo for ggcr, marked insecure (plain HTTP allowed) when
// plainAllowed says so.
func (c *Client) repository(host, repo string) (name.Repository, error) {
	var opts []name.Option
	if c.plainAllowed(host) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.NewRepository(host+"/"+repo, opts...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("repository %s/%s: %w", host, repo, err)
	}
	return r, nil
}

// authTransport returns the authenticated transport for pulling from repo,
// performing the ping/token handshake once per repository. Failures are not
// cached, so a later call tries again.
func (c *Client) authTransport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	key := repo.Scheme() + "://" + repo.Name()
	c.mu.Lock()
	e := c.auth[key]
	if e == nil {
		e = &authEntry{}
		c.auth[key] = e
	}
	c.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.rt != nil {
		return e.rt, nil
	}
	// Credentials are looked up under Docker Hub's canonical name even when the
	// blob URL uses registry-1.docker.io, so docker config entries apply.
	credRepo := repo
	if repo.RegistryStr() == "registry-1.docker.io" {
		if r, err := name.NewRepository(name.DefaultRegistry + "/" + repo.RepositoryStr()); err == nil {
			credRepo = r
		}
	}
	auth, err := authn.Resolve(ctx, c.keychain, credRepo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", repo.Name(), err)
	}
	// NewWithContext pings for the challenge; the scheme its ping got an answer
	// on (a loopback registry may speak TLS) is noted on the way, so that the
	// handshake costs one ping, not two: a round trip of every cold start.
	ps := &pingScheme{inner: c}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, ps, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, classify(fmt.Errorf("registry %s: %w", repo.RegistryStr(), redactErr(err)))
	}
	e.rt = rt
	e.scheme = "https"
	if ps.answered() == "http" {
		e.scheme = "http"
	}
	return rt, nil
}

// pingScheme passes requests on and notes the scheme of the first ping
// (GET /v2/) that got an answer the handshake accepts (200 or 401), which is the
// one go-containerregistry's ping picks: it takes the first good answer.
type pingScheme struct {
	inner  http.RoundTripper
	mu     sync.Mutex
	scheme string
}

func (p *pingScheme) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := p.inner.RoundTrip(r)
	if err == nil && r.URL.Path == "/v2/" && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized) {
		p.mu.Lock()
		if p.scheme == "" {
			p.scheme = r.URL.Scheme
		}
		p.mu.Unlock()
	}
	return resp, err
}

func (p *pingScheme) answered() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.scheme
}

// schemeOf is the scheme a repository's registry answered on ("" before the
// first successful handshake).
func (c *Client) schemeOf(repo name.Repository) string {
	c.mu.Lock()
	e := c.auth[repo.Scheme()+"://"+repo.Name()]
	c.mu.Unlock()
	if e == nil {
		return ""
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.scheme
}

// forgetAuth drops a repository's transport so the next use handshakes again
// (fresh credentials, fresh token).
func (c *Client) forgetAuth(repo name.Repository) {
	key := repo.Scheme() + "://" + repo.Name()
	c.mu.Lock()
	delete(c.auth, key)
	c.mu.Unlock()
}

// classify wraps err with the sentinel that says how to treat it.
func classify(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		case te.StatusCode == http.StatusTooManyRequests || te.StatusCode >= 500:
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	if isNetErr(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

var errPlainHTTP = errors.New("refusing plain HTTP")

// isPermanent reports request failures that retrying cannot fix: a refused
// plain-HTTP request and TLS verification failures.
func isPermanent(err error) bool {
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recordErr tls.RecordHeaderError
	return errors.Is(err, errPlainHTTP) || errors.As(err, &certErr) || errors.As(err, &unknownCA) ||
		errors.As(err, &hostErr) || errors.As(err, &invalid) || errors.As(err, &recordErr)
}

// isNetErr reports connection-level failures worth retrying.
func isNetErr(err error) bool {
	if errors.Is(err, context.Canceled) || isPermanent(err) {
		return false
	}
	var oe *net.OpError
	if errors.As(err, &oe) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "connection reset") || strings.Contains(msg, "broken pipe") || strings.Contains(msg, "EOF")
}

// maxManifest bounds a manifest or index body (the OCI distribution spec's
// recommended limit), so a forged size cannot make us allocate much.
const maxManifest = 4 << 20

// limitManifest refuses manifest answers larger than maxManifest. It sits in
// Client.RoundTrip because go-containerregistry only uses a transport as given
// (without adding its own retries and auth) when it is its own *Wrapper type.
func limitManifest(req *http.Request, resp *http.Response) (*http.Response, error) {
	if resp.ContentLength > maxManifest {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: manifest %s: %d bytes, limit %d", ErrBadResponse, req.URL.Path, resp.ContentLength, maxManifest)
	}
	resp.Body = limitedBody{io.LimitReader(resp.Body, maxManifest+1), resp.Body, 0}
	return resp, nil
}

// limitedBody fails once more than maxManifest bytes were read.
type limitedBody struct {
	r io.Reader
	c io.Closer
	n int64
}

func (l limitedBody) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if lr, ok := l.r.(*io.LimitedReader); ok && lr.N == 0 {
		return n, fmt.Errorf("%w: manifest larger than %d bytes", ErrBadResponse, maxManifest)
	}
	return n, err
}

func (l limitedBody) Close() error { return l.c.Close() }

// Keychain is the credential chain of a client made with o: the credential
// service, then the credential file, then o.Keychain (docker's config and
// credential helpers by default). Tools that hand credentials to another
// registry library (containerd's resolver) use it to find the same ones.
func Keychain(o Options) (authn.Keychain, error) {
	var kcs []authn.Keychain
	if o.CredentialService != nil {
		kc, err := o.CredentialService.Keychain()
		if err != nil {
			return nil, err
		}
		kcs = append(kcs, kc)
	}
	if o.CredentialFile != "" {
		kcs = append(kcs, CredentialFileKeychain(o.CredentialFile))
	}
	if o.Keychain != nil {
		kcs = append(kcs, o.Keychain)
	} else {
		kcs = append(kcs, authn.DefaultKeychain)
	}
	return authn.NewMultiKeychain(kcs...), nil
}
