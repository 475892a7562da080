// Package remote opens image layers that live in an OCI registry: each blob is read
// through the local extent cache (package cache) from the registry client (package
// registry). It implements image.RemoteOpener and builds device configs from image
// references.
package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/registry"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Options configure an Opener.
type Options struct {
	Registry registry.Options
	CacheDir string        // the extent cache directory
	Cache    cache.Options // capacity, refill unit, ...
	Logger   *zap.Logger
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
	return o, nil
}

// Read-ahead defaults for registry blobs, larger than the cache's own: a
// sequential reader only reaches the link's bandwidth if bandwidth × RTT bytes
// are in flight (100 MiB/s × 200 ms = 20 MiB); the cache refills its read-ahead
// window when half of it is missing, concurrent fetches of a refill share the
// link and end together, and every source read costs a round trip, so the
// window must be several BDPs and the fetches large. BenchmarkSequentialHighRTT
// (200 ms, 100 MiB/s) gives ~13% of the cap with the cache defaults (4 MiB
// window, 4 MiB fetches), ~55-60% with these. Memory stays bounded: at most
// MaxFetches (8) fetch buffers of MaxFetchSize are live, 128 MiB. Only streams
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
	return &Opener{client: c, cache: ca, lg: o.Logger, metrics: m, dir: o.CacheDir}, nil
}

// Collector reports registry requests, latency, retries, bytes fetched and the
// cache's counters, for the daemon's metrics endpoint.
func (o *Opener) Collector() prometheus.Collector { return o.metrics }

// Client is the registry client, for resolving references.
func (o *Opener) Client() *registry.Client { return o.client }

// Close releases the registry client's connections.
func (o *Opener) Close() { o.client.Close() }

// OpenBlob opens the blob at url (repoBlobUrl/digest) through the cache. The cache
// key is the digest, so blobs are shared across repositories and registries, as
// the reference's cache does.
func (o *Opener) OpenBlob(ctx context.Context, url string, l config.Layer) (image.Blob, error) {
	return o.openBlob(ctx, url, l, false)
}

// openBlob is OpenBlob; lazy skips the open probe when the size is known (Pull:
// the first read reports the same errors, one round trip later).
func (o *Opener) openBlob(ctx context.Context, url string, l config.Layer, lazy bool) (*cachedBlob, error) {
	if l.Digest == "" {
		return nil, errors.New("remote layer without a digest")
	}
	// A blob the cache holds whole needs no probe: the registry is asked only if
	// a page later fails its check, so a warm attach works with the registry down.
	var src *registry.Blob
	var err error
	if size := int64(l.Size); size > 0 && (lazy || o.cache.Complete(l.Digest, size)) {
		src, err = o.client.LazyBlob(url, size)
	} else {
		src, err = o.client.OpenBlob(ctx, url, size)
	}
	if err != nil {
		return nil, err
	}
	b, err := o.cache.Open(l.Digest, src)
	if err != nil {
		src.Close()
		return nil, err
	}
	return &cachedBlob{Blob: b, src: src}, nil
}

// cachedBlob closes the registry side with the cache handle. It keeps the cache's
// Evict, which the ZFile reader calls when a block fails its CRC.
type cachedBlob struct {
	*cache.Blob
	src *registry.Blob
}

// Source is the registry blob itself, which the background download reads.
func (b *cachedBlob) Source() io.ReaderAt { return b.src }

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
