package registry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/obd-project/obd/config"
	"go.uber.org/zap"
)

// Layer-descriptor annotations of a converted image (ACI pkg/label).
const (
	AnnotationBlobDigest = "containerd.io/snapshot/overlaybd/blob-digest"
	AnnotationBlobSize   = "containerd.io/snapshot/overlaybd/blob-size"
	AnnotationVersion    = "containerd.io/snapshot/overlaybd/version"
)

// Image is a resolved image manifest.
type Image struct {
	Ref        string // the reference as resolved (with the registry filled in)
	Registry   string // registry host[:port] as named in the reference
	Repository string // repository path, e.g. "library/redis"
	Digest     string // manifest digest
	MediaType  string // manifest media type
	// RepoBlobURL is "scheme://host/v2/<repo>/blobs" for config.v1.json; Docker
	// Hub's host is registry-1.docker.io there.
	RepoBlobURL string
	Layers      []Layer // bottom first
}

// Layer is one manifest layer.
type Layer struct {
	Index       int
	Digest      string
	Size        int64
	MediaType   string
	Annotations map[string]string
	// Overlaybd is true when the layer carries the overlaybd blob-digest and
	// blob-size annotations, i.e. its blob is an overlaybd layer read remotely.
	Overlaybd bool
	// Version is the overlaybd/version annotation ("0.1.0", ...), if any.
	Version string
}

// Lowers returns config.v1.json lowers[] entries (digest and size) for the layers.
func (im *Image) Lowers() []config.Layer {
	out := make([]config.Layer, len(im.Layers))
	for i, l := range im.Layers {
		out[i] = config.Layer{Digest: l.Digest, Size: uint64(l.Size)}
	}
	return out
}

// BlobURL is the URL of one of the image's blobs.
func (im *Image) BlobURL(digest string) string { return im.RepoBlobURL + "/" + digest }

// CheckOverlaybd fails, naming the first offending layer, unless every layer is an
// overlaybd blob.
func (im *Image) CheckOverlaybd() error {
	if len(im.Layers) == 0 {
		return fmt.Errorf("%w: image %s has no layers", ErrNotOverlaybd, im.Ref)
	}
	for _, l := range im.Layers {
		if !l.Overlaybd {
			return fmt.Errorf("%w: image %s: layer %d %s is not an overlaybd layer (media type %s, no %s annotation)",
				ErrNotOverlaybd, im.Ref, l.Index, l.Digest, l.MediaType, AnnotationBlobDigest)
		}
	}
	return nil
}

// Resolve resolves ref with a fresh Client; see Client.Resolve.
func Resolve(ctx context.Context, ref string, opts Options) (*Image, error) {
	c, err := NewClient(opts)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Resolve(ctx, ref)
}

// Resolve fetches the manifest of ref ("host[:port]/repo:tag" or "...@sha256:..."),
// picking Options.Platform out of an index, and fails unless it is an overlaybd
// image (ErrNotOverlaybd).
func (c *Client) Resolve(ctx context.Context, ref string) (*Image, error) {
	im, err := c.ResolveManifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := im.CheckOverlaybd(); err != nil {
		return nil, err
	}
	return im, nil
}

// ResolveManifest is Resolve without the overlaybd check.
func (c *Client) ResolveManifest(ctx context.Context, ref string) (*Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	host := r.Context().RegistryStr()
	if c.plainAllowed(host) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			return nil, fmt.Errorf("image reference %q: %w", ref, err)
		}
	}
	if im := c.resolveMirrors(ctx, r); im != nil {
		return im, nil
	}
	var im *Image
	err = c.retry(ctx, func(ctx context.Context) error {
		var err error
		im, err = c.resolveOnce(ctx, r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r.Name(), withTLSHint(host, err))
	}
	return im, nil
}

func (c *Client) resolveOnce(ctx context.Context, r name.Reference) (*Image, error) {
	repo := r.Context()
	rt, err := c.authTransport(ctx, repo)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(r, remote.WithTransport(rt), remote.WithContext(ctx), remote.WithPlatform(*c.opts.Platform))
	if err != nil {
		return nil, classify(err)
	}
	img, err := desc.Image()
	if err != nil {
		return nil, classify(err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, classify(err)
	}
	dg, err := img.Digest()
	if err != nil {
		return nil, classify(err)
	}
	im := &Image{
		Ref:         r.Name(),
		Registry:    repo.RegistryStr(),
		Repository:  repo.RepositoryStr(),
		Digest:      dg.String(),
		MediaType:   string(m.MediaType),
		RepoBlobURL: c.repoBlobURL(repo),
	}
	for i, d := range m.Layers {
		l := Layer{Index: i, Digest: d.Digest.String(), Size: d.Size, MediaType: string(d.MediaType), Annotations: d.Annotations}
		if d.Size < 0 || d.Size > c.opts.MaxBlobSize {
			// Readers size their state by it: refuse before anything opens the blob.
			if err := c.checkSize(c.repoBlobURL(repo)+"/"+l.Digest, d.Size, "manifest"); err != nil {
				return nil, fmt.Errorf("%w: layer %d: %w", ErrBadResponse, i, err)
			}
			return nil, fmt.Errorf("%w: layer %d (%s): negative size %d", ErrBadResponse, i, l.Digest, d.Size)
		}
		bd, hasDigest := d.Annotations[AnnotationBlobDigest]
		bs, hasSize := d.Annotations[AnnotationBlobSize]
		if hasDigest && hasSize {
			// A converted layer names its own blob; a mismatch is a broken manifest,
			// and using either value could read the wrong blob.
			if bd != l.Digest {
				return nil, fmt.Errorf("%w: layer %d: annotation %s = %s, descriptor digest %s", ErrBadResponse, i, AnnotationBlobDigest, bd, l.Digest)
			}
			if n, err := strconv.ParseInt(bs, 10, 64); err != nil || n != l.Size {
				return nil, fmt.Errorf("%w: layer %d: annotation %s = %q, descriptor size %d", ErrBadResponse, i, AnnotationBlobSize, bs, l.Size)
			}
			l.Overlaybd = true
			l.Version = d.Annotations[AnnotationVersion]
		}
		im.Layers = append(im.Layers, l)
	}
	return im, nil
}

// retry runs op until it succeeds, fails with something other than ErrUnavailable,
// or the retry policy is spent.
func (c *Client) retry(ctx context.Context, op func(context.Context) error) error {
	pol := c.opts.Retry
	ctx, cancel := context.WithTimeout(ctx, pol.Deadline)
	defer cancel()
	var err error
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, pol.AttemptTimeout)
		err = op(actx)
		acancel()
		if err == nil || !errors.Is(err, ErrUnavailable) || attempt >= pol.MaxAttempts || ctx.Err() != nil {
			break
		}
		wait := backoff(pol, attempt)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			break
		}
		if obs := c.opts.Observer; obs != nil {
			obs.Retry("resolve", wait)
		}
		c.opts.Logger.Debug("registry resolve retry", zap.Int("attempt", attempt), zap.Error(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	if err != nil && ctx.Err() != nil && !errors.Is(err, ErrUnavailable) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// repoBlobURL is what config.v1.json's repoBlobUrl says for repo, as ACI builds it.
func (c *Client) repoBlobURL(repo name.Repository) string {
	host := repo.RegistryStr()
	if host == name.DefaultRegistry {
		host = "registry-1.docker.io"
	}
	scheme := c.schemeOf(repo)
	if scheme == "" {
		scheme = "https"
		if c.plainAllowed(host) {
			scheme = "http"
		}
	}
	return scheme + "://" + host + "/v2/" + repo.RepositoryStr() + "/blobs"
}
