// Package remote opens image layers that live in an OCI registry: each blob is read
// through the local extent cache (package cache) from the registry client (package
// registry). It implements image.RemoteOpener and builds device configs from image
// references.
package remote

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/registry"
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
// credentialConfig (file mode), certConfig and userAgent.
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
	case "":
	default:
		return o, fmt.Errorf("credentialConfig.mode %q is not supported by obd yet (only \"file\"; docker config.json and credential helpers are always used)", cred.Mode)
	}
	o.Registry.CertFile, o.Registry.KeyFile = g.CertConfig.CertFile, g.CertConfig.KeyFile
	return o, nil
}

// Opener opens remote layer blobs through one shared registry client and cache.
type Opener struct {
	client *registry.Client
	cache  *cache.Cache
	lg     *zap.Logger
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
	c, err := registry.NewClient(o.Registry)
	if err != nil {
		return nil, err
	}
	ca, err := cache.Open(o.CacheDir, o.Cache)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Opener{client: c, cache: ca, lg: o.Logger}, nil
}

// Client is the registry client, for resolving references.
func (o *Opener) Client() *registry.Client { return o.client }

// Close releases the registry client's connections.
func (o *Opener) Close() { o.client.Close() }

// OpenBlob opens the blob at url (repoBlobUrl/digest) through the cache. The cache
// key is the digest, so blobs are shared across repositories and registries, as
// the reference's cache does.
func (o *Opener) OpenBlob(ctx context.Context, url string, l config.Layer) (image.Blob, error) {
	if l.Digest == "" {
		return nil, errors.New("remote layer without a digest")
	}
	src, err := o.client.OpenBlob(ctx, url, int64(l.Size))
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

// Config resolves ref into a device config (see ImageConfig).
func (o *Opener) Config(ctx context.Context, ref string) (*config.ImageConfig, error) {
	cfg, _, err := o.ImageConfig(ctx, ref)
	return cfg, err
}
