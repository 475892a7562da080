// Package remote opens image layers that live in an OCI registry: each blob is read
// through the local extent cache (package cache) from the registry client (package
// registry). It implements image.RemoteOpener and builds device configs from image
// references.
package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Options configure an Opener.
type Options struct {
	Registry registry.Options
	CacheDir string        // the extent cache directory
	Cache    cache.Options // capacity, refill unit, ...
	// P2P is p2pConfig: with Enable, blob data goes through a proxy (modes
	// "proxy", "dragonfly") or peers ("peers"); the cache stays in front.
	P2P config.P2PConfig
	// P2PMetrics receives the P2P counters (nil: the Opener makes its own; see
	// Opener.P2PMetrics).
	P2PMetrics *p2p.Metrics
	Logger     *zap.Logger
}

// OptionsFromGlobal maps the daemon config (overlaybd.json) to Options: cacheConfig,
// credentialConfig (file, http, https and uds modes), certConfig and userAgent.
func OptionsFromGlobal(g *config.GlobalConfig) (Options, error) {
	var o Options
	cc := g.Cache()
	if cc.Type != "" && cc.Type != "file" {
		return o, fmt.Errorf("cacheConfig.cacheType %q is not supported by obd (only \"file\")", cc.Type)
	}
	o.CacheDir = cc.Dir
	o.Cache.Capacity = int64(cc.SizeGB) << 30
	o.Cache.RefillSize = int(cc.RefillSize)
	cred := g.Credentials()
	switch cred.Mode {
	case "file":
		if cred.Path != "" {
			if _, err := os.Stat(cred.Path); err == nil {
				o.Registry.CredentialFile = cred.Path
			}
		}
	case "http", "https", "uds":
		if cred.Path != "" {
			o.Registry.CredentialService = &registry.CredentialService{
				Mode: cred.Mode, Path: cred.Path, Timeout: time.Duration(cred.Timeout) * time.Second,
				ClientCertPath: cred.ClientCertPath, ClientKeyPath: cred.ClientKeyPath, ServerCAPath: cred.ServerCAPath,
			}
			// Fail at startup, not at the first pull, on a bad URL or unreadable TLS file.
			if _, err := o.Registry.CredentialService.Keychain(); err != nil {
				return o, err
			}
		}
	case "":
	default:
		return o, fmt.Errorf("credentialConfig.mode %q: want file, http, https or uds", cred.Mode)
	}
	o.Registry.CertFile, o.Registry.KeyFile = g.CertConfig.CertFile, g.CertConfig.KeyFile
	o.Registry.CAFile = g.CertConfig.CAFile
	// An insecure registry may answer on plain HTTP or on TLS that is not
	// verified (as Docker's insecure-registries): the client tries HTTPS first.
	o.Registry.PlainHTTP = g.Insecure()
	o.Registry.InsecureSkipVerify = g.Insecure()
	o.Registry.Mirrors = g.Mirrors()
	o.P2P = g.P2PConfig
	return o, nil
}

// Read-ahead defaults for registry blobs, larger than the cache's own: a
// sequential reader only reaches the link's bandwidth if bandwidth × RTT bytes
// are in flight (100 MiB/s × 200 ms = 20 MiB); the cache refills its read-ahead
// window when half of it is missing, concurrent fetches of a refill share the
// link and end together, and every source read costs a round trip, so the
// window must be several BDPs and the fetches large. BenchmarkSequentialHighRTT
// (200 ms, 100 MiB/s) gives ~13% of the cap with the cache defaults (4 MiB
// window, 4 MiB fetches), 53-57% with these. The window grows with each stream
// (cache: as long as what the stream has read), so reading a file of a few MiB
// fetches about twice its size, not 128 MiB. Memory stays bounded: at most
// MaxFetches (8) fetch buffers of MaxFetchSize are live per registry, 128 MiB,
// and MaxTotalFetches (32) over all registries. Only streams
// (three sequential reads) read ahead: random reads fetch just the units they miss.
const (
	DefaultReadAhead    = 128 << 20
	DefaultMaxFetchSize = 16 << 20
)

// Opener opens remote layer blobs through one shared registry client and cache.
type Opener struct {
	client  *registry.Client
	cache   *cache.Cache
	lg      *zap.Logger
	metrics *metrics
	dir     string // the cache directory (pulled image configs live under it)

	p2pMetrics *p2p.Metrics
	proxy      *p2p.Proxy  // proxy and dragonfly modes
	peers      *p2p.Client // peer mode
	server     *p2p.Server // peer mode
}

var _ image.RemoteOpener = (*Opener)(nil)

// NewOpener creates the registry client and opens the cache directory.
func NewOpener(o Options) (*Opener, error) {
	if o.Logger == nil {
		o.Logger = zap.L()
	}
	if o.CacheDir == "" {
		return nil, errors.New("remote: no cache directory")
	}
	o.Registry.Logger = o.Logger
	o.Cache.Logger = o.Logger
	m := newMetrics()
	if o.Registry.Observer == nil {
		o.Registry.Observer = m
	}
	if o.Cache.ReadAhead == 0 {
		o.Cache.ReadAhead = DefaultReadAhead
	}
	if o.Cache.MaxFetchSize == 0 {
		o.Cache.MaxFetchSize = DefaultMaxFetchSize
	}
	// One bound on blob sizes, whichever side was given it.
	if o.Cache.MaxBlobSize == 0 {
		o.Cache.MaxBlobSize = o.Registry.MaxBlobSize
	}
	if o.Registry.MaxBlobSize == 0 {
		o.Registry.MaxBlobSize = o.Cache.MaxBlobSize
	}
	if o.P2P.Enable && o.P2P.Mode == config.P2PModePeers {
		// One chunk per fill: a fill then waits only on the chunk's owner, which
		// ranks above this node, so nodes never wait on each other in a cycle.
		// The p2p client bounds peer and registry requests itself, so the
		// cache's bound (whose slots a fill holds while it waits on a peer) is
		// lifted.
		o.Cache.MaxFetchSize = o.Cache.RefillSize
		if o.Cache.MaxFetchSize == 0 {
			o.Cache.MaxFetchSize = cache.DefaultRefillSize
		}
		o.Cache.MaxFetches = 1 << 10
	}
	op := &Opener{lg: o.Logger, p2pMetrics: o.P2PMetrics}
	if op.p2pMetrics == nil {
		op.p2pMetrics = p2p.NewMetrics()
	}
	if err := op.setupProxy(&o); err != nil {
		return nil, err
	}
	c, err := registry.NewClient(o.Registry)
	if err != nil {
		return nil, err
	}
	ca, err := cache.Open(o.CacheDir, o.Cache)
	if err != nil {
		c.Close()
		return nil, err
	}
	m.cache, m.usage = ca.Stats, ca.Usage
	op.client, op.cache, op.metrics, op.dir = c, ca, m, o.CacheDir
	if err := op.setupPeers(o); err != nil {
		c.Close()
		ca.Close()
		return nil, err
	}
	return op, nil
}

// setupProxy makes the proxy of the proxy and dragonfly modes and hooks it into
// the registry client's data requests.
func (op *Opener) setupProxy(o *Options) error {
	pc := o.P2P
	if !pc.Enable || pc.Mode == config.P2PModePeers {
		return nil
	}
	po := p2p.ProxyOptions{Metrics: op.p2pMetrics, Logger: o.Logger}
	if pc.TLSCA != "" {
		// Dragonfly mode also adds the PEM to the registry client's TLS settings (p2p.ProxyOptions).
		pem, err := os.ReadFile(pc.TLSCA)
		if err != nil {
			return fmt.Errorf("p2p CA file: %w", err)
		}
		t, err := p2p.ClientTLSPEM(pc.TLSCA, pem)
		if err != nil {
			return err
		}
		po.TLS, po.CAPEM = t, pem
	}
	var err error
	if pc.Mode == config.P2PModeDragonfly {
		op.proxy, err = p2p.NewDragonfly(pc.Address, po)
	} else {
		if host, clear := clearTextProxy(pc.Address); clear {
			if !pc.AllowInsecureProxy {
				o.Logger.Error("p2p proxy disabled: URL-prefix mode sends the registry's Authorization header to the proxy, "+
					"and this one is plain http:// on a non-loopback host; use https://, a proxy on loopback, "+
					"or set p2pConfig.allowInsecureProxy to accept it. Blob data is read from the registry directly.",
					zap.String("proxy", host))
				return nil
			}
			o.Logger.Warn("INSECURE p2p proxy: registry credentials (Authorization) cross the network in clear text "+
				"to this plain http:// proxy (p2pConfig.allowInsecureProxy)", zap.String("proxy", host))
		}
		op.proxy, err = p2p.NewURLProxy(pc.Address, po)
	}
	if err != nil {
		return err
	}
	// The reference checks the proxy once; obd keeps checking (see p2p.Proxy).
	if err := op.proxy.Check(context.Background()); err != nil {
		o.Logger.Warn("p2p proxy not reachable now; reads go to the registry until it is", zap.Error(err))
	}
	o.Registry.DataProxy = op.proxy
	return nil
}

// clearTextProxy reports whether a URL-prefix proxy address (as p2pConfig.address:
// [scheme://]host:port[/path], http when no scheme) is plain HTTP to a host that is
// not loopback, and returns the host.
func clearTextProxy(address string) (string, bool) {
	a := strings.TrimSpace(address)
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	u, err := url.Parse(a)
	if err != nil || u.Scheme != "http" {
		return "", false // https, or an address NewURLProxy rejects itself
	}
	h := u.Hostname()
	if ip := net.ParseIP(h); h == "localhost" || (ip != nil && ip.IsLoopback()) {
		return u.Host, false
	}
	return u.Host, true
}

// setupPeers makes the peer client and server of peer mode.
func (op *Opener) setupPeers(o Options) error {
	pc := o.P2P
	if !pc.Enable || pc.Mode != config.P2PModePeers {
		return nil
	}
	token, err := p2p.LoadToken(pc.Token, pc.TokenFile)
	if err != nil {
		return err
	}
	// A node others list but that does not know its own entry would ask its
	// children for the chunks it owns: require it.
	if pc.Advertise == "" {
		return errors.New("p2pConfig: peer mode needs advertise (this node's entry in the peer list)")
	}
	set, err := p2p.NewPeerSet(pc.Advertise, pc.Peers, pc.PeersFile, o.Logger)
	if err != nil {
		return err
	}
	co := p2p.ClientOptions{Peers: set, Token: token, ChunkSize: o.Cache.RefillSize, FanOut: pc.FanOut,
		Metrics: op.p2pMetrics, Logger: o.Logger}
	if pc.TLSCA != "" {
		if co.TLS, err = p2p.ClientTLS(pc.TLSCA); err != nil {
			return err
		}
	}
	if op.peers, err = p2p.NewClient(co); err != nil {
		return err
	}
	op.server, err = p2p.NewServer(p2p.ServerOptions{Cache: op.cache, Token: token, Metrics: op.p2pMetrics, Logger: o.Logger,
		Open: func(digest, url string, size int64) (cache.Source, error) {
			b, err := op.client.LazyBlob(url, size)
			if err != nil {
				return nil, err
			}
			return op.peers.ServerSource(digest, url, b), nil
		}})
	return err
}

// Collector reports registry requests, latency, retries, bytes fetched and the
// cache's counters, for the daemon's metrics endpoint.
func (o *Opener) Collector() prometheus.Collector { return o.metrics }

// Client is the registry client, for resolving references.
func (o *Opener) Client() *registry.Client { return o.client }

// P2PMetrics are the P2P counters, for the daemon's metrics registry.
func (o *Opener) P2PMetrics() *p2p.Metrics { return o.p2pMetrics }

// PeerServer is the handler serving this node's cache to peers (nil unless
// p2pConfig.mode is "peers").
func (o *Opener) PeerServer() *p2p.Server { return o.server }

// Close releases the registry client's, proxy's and peers' connections.
func (o *Opener) Close() {
	o.client.Close()
	if o.proxy != nil {
		o.proxy.Close()
	}
	if o.peers != nil {
		o.peers.Close()
	}
	if o.server != nil {
		o.server.Close()
	}
}

// OpenBlob opens the blob at url (repoBlobUrl/digest) through the cache. The cache
// key is the digest, so blobs are shared across repositories and registries, as
// the reference's cache does.
func (o *Opener) OpenBlob(ctx context.Context, url string, l config.Layer) (image.RemoteBlob, error) {
	return o.openBlob(ctx, url, l, false)
}

// cached reports whether the cache holds any unit of the blob.
func (o *Opener) cached(digest string, size int64) bool {
	have, _ := o.cache.CachedUnits(digest, size)
	return have > 0
}

// openBlob is OpenBlob; lazy skips the open probe when the size is known (Pull:
// the first read reports the same errors, one round trip later).
func (o *Opener) openBlob(ctx context.Context, url string, l config.Layer, lazy bool) (*cachedBlob, error) {
	if l.Digest == "" {
		return nil, errors.New("remote layer without a digest")
	}
	// A blob the cache already holds (part of) needs no probe: it exists, and
	// the registry is asked only for what is missing or fails its check, so a
	// warm attach makes no request and works with the registry down. A cold
	// open of a blob of known size reads its head (below) instead of probing
	// one byte: the same round trip surfaces auth and not-found errors and
	// brings the bytes the layer's open reads first. A blob of unknown size is
	// probed, and so is every blob in the proxy modes: the registry client
	// sends a blob's first request directly, to learn whether the registry
	// serves it or redirects, and that should cost one byte, not the head.
	var src *registry.Blob
	var err error
	size := int64(l.Size)
	cold := size > 0 && !lazy && !o.cached(l.Digest, size)
	if size > 0 && (!cold || o.proxy == nil) {
		src, err = o.client.LazyBlob(url, size)
	} else {
		src, err = o.client.OpenBlob(ctx, url, size)
	}
	if err != nil {
		return nil, err
	}
	var cs cache.Source = src
	var ps *p2p.Source
	if o.peers != nil {
		ps = o.peers.Source(l.Digest, url, src)
		cs = ps
	}
	b, err := o.cache.Open(l.Digest, cs)
	if err != nil {
		src.Close()
		return nil, err
	}
	cb := &cachedBlob{Blob: b, src: src, peers: ps}
	if cold {
		if err := cb.warmOpen(ctx); err != nil {
			// The registry side first: closing the cache handle waits for
			// its fills, which a cancelled attach must not wait out.
			src.Close()
			cb.Close()
			return nil, fmt.Errorf("open blob %s: %w", src.URL(), err)
		}
	}
	return cb, nil
}

// What a cold open fetches before the layer's own open reads: the head (tar
// header, ZFile and LSMT headers) and, at the same time, the tail (ZFile
// trailer and jump table, LSMT index and trailer), so that those reads, which
// otherwise follow one another (header, then trailer, then index), cost one
// round trip. The tail grows with the blob (a jump table or index is a small
// fraction of it), so a small image stays lazy: the cache fetches whole refill
// units, and a fixed large tail would fetch most of a small blob that a mount
// reads only a part of. A tail too short for the index costs one more round
// trip, never a wrong byte.
const (
	openHead    = 256 << 10
	openTailMin = 64 << 10
	openTailMax = 1 << 20
)

// openTail is how much of the blob's end a cold open fetches.
func openTail(size int64) int64 {
	return min(max(size/64, openTailMin), openTailMax)
}

// warmOpen reads the blob's head and tail into the cache, at once, and waits
// for both (the layer's open needs both next), or for ctx; the head read's
// error (auth, not found, size) is the open's. A failed tail read is left to
// the layer's own read of it, which retries and reports it. The reads know
// what they want (blobio.Exact: no read-ahead).
func (b *cachedBlob) warmOpen(ctx context.Context) error {
	size := b.Size()
	head := min(size, openHead)
	var wg sync.WaitGroup
	if tail := max(head, size-openTail(size)); tail < size {
		wg.Go(func() { b.Blob.ReadAtIntent(context.Background(), blobio.Exact, make([]byte, size-tail), tail) })
	}
	var err error
	wg.Go(func() { _, err = b.Blob.ReadAtIntent(context.Background(), blobio.Exact, make([]byte, head), 0) })
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cachedBlob is a remote blob read through the cache (image.RemoteBlob): ReadAt
// and ReadAtIntent are the cache's, Evict also penalises peers, Direct is the
// registry blob, and Close closes the registry side with the cache handle.
type cachedBlob struct {
	*cache.Blob
	src   *registry.Blob
	peers *p2p.Source // peer mode: told of evictions, to penalise the peer that served the bytes
}

// Evict drops the range from the cache and, in peer mode, penalises the peers
// that served it.
func (b *cachedBlob) Evict(off, n int64) error {
	dropped, err := b.Blob.Invalidate(off, n)
	if dropped && b.peers != nil { // not for a stale Evict: the bytes now cached came later
		b.peers.Evicted(off, n)
	}
	return err
}

var _ image.RemoteBlob = (*cachedBlob)(nil)

// Direct is the registry blob itself, which the background download reads (in
// peer mode too: the download reads the registry, as the reference does).
func (b *cachedBlob) Direct() blobio.Reader { return b.src }

func (b *cachedBlob) Close() error {
	err := b.Blob.Close()
	b.src.Close()
	return err
}

// ImageConfig resolves ref and returns a device config that reads its layers
// remotely (repoBlobUrl + lowers[].digest/size), as the snapshotter would write it.
func (o *Opener) ImageConfig(ctx context.Context, ref string) (*config.ImageConfig, *registry.Image, error) {
	im, err := o.client.Resolve(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	cfg := &config.ImageConfig{RepoBlobURL: im.RepoBlobURL, Lowers: im.Lowers(), Download: config.DefaultDownload()}
	return cfg, im, nil
}

// Config resolves ref into a device config (see ImageConfig). When the registry
// is unreachable, an image fetched by Pull resolves to the config Pull recorded.
func (o *Opener) Config(ctx context.Context, ref string) (*config.ImageConfig, error) {
	cfg, _, err := o.ImageConfig(ctx, ref)
	if err != nil {
		return o.resolveOffline(ref, err)
	}
	return cfg, nil
}
