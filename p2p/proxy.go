package p2p

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/registry"
	"go.uber.org/zap"
)

// Dragonfly header conventions (dfdaemon's HTTP proxy).
const (
	HeaderDragonflyUseP2P     = "X-Dragonfly-Use-P2P"
	HeaderDragonflyPriority   = "X-Dragonfly-Priority"
	HeaderDragonflyErrorType  = "X-Dragonfly-Error-Type"
	DefaultDragonflyAddress   = "127.0.0.1:4001"
	DefaultPriorityOnDemand   = 6 // highest: a reader waits for it
	DefaultPriorityPrefetch   = 2
	defaultProxyDialTimeout   = 2 * time.Second
	defaultProxyHeaderTimeout = 10 * time.Second
	minProxyDown              = 5 * time.Second
	maxProxyDown              = 2 * time.Minute
)

// ProxyOptions configure a Proxy.
type ProxyOptions struct {
	// TLS is the TLS to the proxy (URL-prefix mode), and to https targets through
	// dfdaemon when the direct transport is not an *http.Transport; nil: system
	// roots. In Dragonfly mode, TLS to an https target through CONNECT otherwise
	// uses the direct transport's settings (the registry client's CA file, client
	// certificate and insecure hosts) and also trusts CAPEM (p2pConfig.tlsCA:
	// dfdaemon may intercept with its own CA).
	TLS   *tls.Config
	CAPEM []byte
	// PriorityOnDemand and PriorityPrefetch are the X-Dragonfly-Priority values
	// (defaults DefaultPriorityOnDemand, DefaultPriorityPrefetch).
	PriorityOnDemand, PriorityPrefetch int
	// DialTimeout (default 2 s) and ResponseHeaderTimeout (default 10 s) bound a
	// proxy request before falling back.
	DialTimeout, ResponseHeaderTimeout time.Duration
	Metrics                            *Metrics
	Logger                             *zap.Logger
}

// Proxy is a registry.DataProxy: it sends blob data requests through a P2P
// proxy and falls back to direct requests when the proxy fails. Two modes:
//
//   - URL prefix (the reference's p2pConfig, dadi-p2proxy, Azure peerd): the
//     request goes to "<address>/<full target URL>" with its Range and
//     Authorization headers.
//   - Dragonfly: dfdaemon is an HTTP forward proxy; the request carries
//     X-Dragonfly-Use-P2P and X-Dragonfly-Priority, and an answer with
//     X-Dragonfly-Error-Type is the proxy's own failure.
//
// After a failure the proxy is skipped (reads go direct) for a backoff of 5 s
// doubling to 2 min; then a TCP connect checks it before it is used again.
type Proxy struct {
	dragonfly bool
	prefix    string   // URL-prefix mode: "http://host:port/path" without trailing slash
	hostport  string   // what the health check dials
	proxyURL  *url.URL // Dragonfly mode
	tr        *http.Transport
	o         ProxyOptions
	lg        *zap.Logger

	mu       sync.Mutex
	downTill time.Time
	downFor  time.Duration
	checking bool

	// Dragonfly mode: a transport per TLS setting of the direct transports
	// (the registry client has two: verified and insecure hosts).
	tmu   sync.Mutex
	byTLS map[*tls.Config]*http.Transport
}

// NewURLProxy makes a URL-prefix proxy for address ("host:port/path" or with an
// http:// or https:// scheme, as p2pConfig.address).
func NewURLProxy(address string, o ProxyOptions) (*Proxy, error) {
	u, err := parseProxyAddress(address)
	if err != nil {
		return nil, err
	}
	p := newProxy(o)
	p.prefix = strings.TrimSuffix(u.String(), "/")
	p.hostport = hostPort(u)
	return p, nil
}

// NewDragonfly makes a Dragonfly-mode proxy for dfdaemon at address ("" means
// DefaultDragonflyAddress).
func NewDragonfly(address string, o ProxyOptions) (*Proxy, error) {
	if address == "" {
		address = DefaultDragonflyAddress
	}
	u, err := parseProxyAddress(address)
	if err != nil {
		return nil, err
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("p2p: dragonfly proxy address %q: a proxy address has no path", address)
	}
	p := newProxy(o)
	p.dragonfly = true
	p.proxyURL = &url.URL{Scheme: u.Scheme, Host: u.Host}
	p.hostport = hostPort(u)
	p.tr.Proxy = http.ProxyURL(p.proxyURL)
	return p, nil
}

func newProxy(o ProxyOptions) *Proxy {
	if o.DialTimeout <= 0 {
		o.DialTimeout = defaultProxyDialTimeout
	}
	if o.ResponseHeaderTimeout <= 0 {
		o.ResponseHeaderTimeout = defaultProxyHeaderTimeout
	}
	if o.PriorityOnDemand == 0 {
		o.PriorityOnDemand = DefaultPriorityOnDemand
	}
	if o.PriorityPrefetch == 0 {
		o.PriorityPrefetch = DefaultPriorityPrefetch
	}
	if o.Logger == nil {
		o.Logger = zap.L()
	}
	d := &net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:           d.DialContext,
		TLSClientConfig:       o.TLS,
		ResponseHeaderTimeout: o.ResponseHeaderTimeout,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
	}
	return &Proxy{tr: tr, o: o, lg: o.Logger}
}

// parseProxyAddress accepts "host:port[/path]" (http assumed) or a URL.
func parseProxyAddress(address string) (*url.URL, error) {
	a := strings.TrimSpace(address)
	if a == "" {
		return nil, errors.New("p2p: empty proxy address")
	}
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	u, err := url.Parse(a)
	if err != nil {
		return nil, fmt.Errorf("p2p: proxy address %q: %v", address, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("p2p: proxy address %q: scheme %q, want http or https", address, u.Scheme)
	}
	if u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("p2p: proxy address %q: want [scheme://]host:port[/path]", address)
	}
	return u, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// Close drops idle connections to the proxy.
func (p *Proxy) Close() {
	p.tr.CloseIdleConnections()
	p.tmu.Lock()
	defer p.tmu.Unlock()
	for _, t := range p.byTLS {
		t.CloseIdleConnections()
	}
}

// transport is the transport of a request whose direct transport is direct. In
// Dragonfly mode an https target is reached through a CONNECT tunnel, where the
// TLS handshake is with the registry (or with dfdaemon intercepting it): it must
// trust, and present, what a direct request would, plus dfdaemon's CA.
func (p *Proxy) transport(direct http.RoundTripper) *http.Transport {
	dt, ok := direct.(*http.Transport)
	if !p.dragonfly || !ok || dt.TLSClientConfig == nil {
		return p.tr
	}
	p.tmu.Lock()
	defer p.tmu.Unlock()
	if t := p.byTLS[dt.TLSClientConfig]; t != nil {
		return t
	}
	conf := dt.TLSClientConfig.Clone()
	if len(p.o.CAPEM) > 0 && !conf.InsecureSkipVerify {
		pool := conf.RootCAs
		if pool == nil {
			if pool, _ = x509.SystemCertPool(); pool == nil {
				pool = x509.NewCertPool()
			}
		} else {
			pool = pool.Clone()
		}
		pool.AppendCertsFromPEM(p.o.CAPEM)
		conf.RootCAs = pool
	}
	t := p.tr.Clone()
	t.TLSClientConfig = conf
	if p.byTLS == nil {
		p.byTLS = map[*tls.Config]*http.Transport{}
	}
	p.byTLS[dt.TLSClientConfig] = t
	return t
}

// Check dials the proxy (the reference's health check: a TCP connect).
func (p *Proxy) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.o.DialTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.hostport)
	if err != nil {
		return fmt.Errorf("p2p proxy %s: %w", p.hostport, err)
	}
	c.Close()
	return nil
}

// usable reports whether to try the proxy now; after a down period it
// health-checks first.
func (p *Proxy) usable(ctx context.Context) bool {
	p.mu.Lock()
	if p.downTill.IsZero() {
		p.mu.Unlock()
		return true
	}
	if time.Now().Before(p.downTill) || p.checking {
		p.mu.Unlock()
		return false
	}
	p.checking = true
	p.mu.Unlock()
	err := p.Check(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.checking = false
	if err != nil {
		p.downLocked(err)
		return false
	}
	p.downTill = time.Time{}
	p.lg.Info("p2p proxy back", zap.String("proxy", p.hostport))
	return true
}

// Healthy reports whether the proxy is in use (not in a down period).
func (p *Proxy) Healthy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.downTill.IsZero()
}

func (p *Proxy) down(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.downLocked(err)
}

func (p *Proxy) downLocked(err error) {
	if p.downTill.IsZero() || p.downFor == 0 {
		p.downFor = minProxyDown
	} else if p.downFor < maxProxyDown {
		p.downFor = min(2*p.downFor, maxProxyDown)
	}
	p.downTill = time.Now().Add(p.downFor)
	p.lg.Warn("p2p proxy failed; reading from the registry directly", zap.String("proxy", p.hostport),
		zap.Duration("for", p.downFor), zap.Error(err))
}

// RoundTrip implements registry.DataProxy. In Dragonfly mode, in's Priority
// picks the X-Dragonfly-Priority (blobio.Prefetch: PriorityPrefetch).
func (p *Proxy) RoundTrip(req *http.Request, direct http.RoundTripper, in blobio.Intent) (*http.Response, error) {
	if !p.usable(req.Context()) {
		return p.direct(req, direct)
	}
	preq, err := p.proxyRequest(req, in)
	if err != nil {
		p.down(err)
		return p.direct(req, direct)
	}
	resp, err := p.transport(direct).RoundTrip(preq)
	if err == nil {
		if err = p.check(req, resp); err != nil {
			resp.Body.Close()
		}
	}
	if err != nil {
		if req.Context().Err() != nil {
			return nil, err // the reader gave up: not the proxy's fault
		}
		p.o.Metrics.peerError("proxy")
		p.down(err)
		p.o.Metrics.fallback("proxy", "registry")
		return p.direct(req, direct)
	}
	resp.Body = &proxyBody{ReadCloser: resp.Body, p: p, src: "proxy"}
	return resp, nil
}

func (p *Proxy) direct(req *http.Request, direct http.RoundTripper) (*http.Response, error) {
	resp, err := direct.RoundTrip(req)
	if err == nil {
		resp.Body = &proxyBody{ReadCloser: resp.Body, src: "registry", p: p}
	}
	return resp, err
}

func (p *Proxy) proxyRequest(req *http.Request, in blobio.Intent) (*http.Request, error) {
	r := req.Clone(req.Context())
	if p.dragonfly {
		r.Header.Set(HeaderDragonflyUseP2P, "true")
		prio := p.o.PriorityOnDemand
		if in.Priority == blobio.Prefetch {
			prio = p.o.PriorityPrefetch
		}
		r.Header.Set(HeaderDragonflyPriority, strconv.Itoa(prio))
		return r, nil
	}
	u, err := url.Parse(p.prefix + "/" + req.URL.String())
	if err != nil {
		return nil, fmt.Errorf("p2p proxy URL for %s: %v", req.URL.Redacted(), err)
	}
	r.URL, r.Host = u, ""
	return r, nil
}

// check accepts only a proper answer to the range asked: anything else is the
// proxy's failure, and the direct request decides what the registry says.
func (p *Proxy) check(req *http.Request, resp *http.Response) error {
	if t := resp.Header.Get(HeaderDragonflyErrorType); t != "" {
		return fmt.Errorf("p2p proxy: HTTP %d, %s %s", resp.StatusCode, HeaderDragonflyErrorType, t)
	}
	if isRedirect(resp.StatusCode) && resp.Header.Get("Location") != "" {
		return nil // the registry's redirect, passed on: the client follows it
	}
	rng := req.Header.Get("Range")
	if rng == "" {
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
			return fmt.Errorf("p2p proxy: HTTP %d", resp.StatusCode)
		}
		return nil
	}
	if resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("p2p proxy: HTTP %d for %s", resp.StatusCode, rng)
	}
	first, last, ok := parseRange(rng)
	if !ok {
		return nil // not a range we made; let the registry client judge
	}
	cr, err := registry.ParseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		return fmt.Errorf("p2p proxy: %v", err)
	}
	if cr.First != first || cr.Last != last {
		return fmt.Errorf("p2p proxy: Content-Range %d-%d for %s", cr.First, cr.Last, rng)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != last-first+1 {
		return fmt.Errorf("p2p proxy: Content-Length %d for %s", resp.ContentLength, rng)
	}
	return nil
}

// proxyBody counts bytes by source and takes the proxy out of use when its body
// breaks off (the registry client's retry then goes direct).
type proxyBody struct {
	io.ReadCloser
	p   *Proxy
	src string
}

func (b *proxyBody) Read(q []byte) (int, error) {
	n, err := b.ReadCloser.Read(q)
	b.p.o.Metrics.bytes(b.src, n)
	if err != nil && err != io.EOF && b.src == "proxy" && !errors.Is(err, context.Canceled) {
		b.p.o.Metrics.peerError("proxy")
		b.p.down(err)
	}
	return n, err
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}
