package convert

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/zap"
)

// Layer-descriptor annotations of a converted image (ACI pkg/label).
const (
	AnnotationVersion    = "containerd.io/snapshot/overlaybd/version"
	AnnotationBlobDigest = "containerd.io/snapshot/overlaybd/blob-digest"
	AnnotationBlobSize   = "containerd.io/snapshot/overlaybd/blob-size"
	OverlaybdVersion     = "0.1.0"
)

// ImageOptions configure an image conversion.
type ImageOptions struct {
	Options
	OCI      bool                      // OCI media types (default: Docker, like the reference)
	Progress func(i, n int, l Layer)   // called after each layer (nil: none)
	Logger   *zap.Logger               // nil: no logging
	Platform func(p *v1.Platform) bool // which manifests of an index to convert (nil: all)
}

func (o *ImageOptions) log() *zap.Logger {
	if o.Logger == nil {
		return zap.NewNop()
	}
	return o.Logger
}

// blobLayer is a committed layer blob as a v1.Layer: uncompressed tar media type,
// so digest and diff_id are the same.
type blobLayer struct {
	l  Layer
	mt types.MediaType
}

func (b *blobLayer) Digest() (v1.Hash, error)           { return v1.NewHash(b.l.Digest) }
func (b *blobLayer) DiffID() (v1.Hash, error)           { return v1.NewHash(b.l.Digest) }
func (b *blobLayer) Compressed() (io.ReadCloser, error) { return os.Open(b.l.Path) }
func (b *blobLayer) Uncompressed() (io.ReadCloser, error) {
	return os.Open(b.l.Path)
}
func (b *blobLayer) Size() (int64, error)                { return b.l.Size, nil }
func (b *blobLayer) MediaType() (types.MediaType, error) { return b.mt, nil }

// mediaTypes returns the manifest, config and layer media types.
func mediaTypes(oci bool) (types.MediaType, types.MediaType, types.MediaType) {
	if oci {
		return types.OCIManifestSchema1, types.OCIConfigJSON, types.OCIUncompressedLayer
	}
	return types.DockerManifestSchema2, types.DockerConfigJSON, types.DockerUncompressedLayer
}

// layerAddendum is a committed overlaybd layer as a manifest entry: the blob
// itself as an uncompressed layer of media type lmt, with the overlaybd
// annotations the snapshotter reads.
func layerAddendum(l Layer, lmt types.MediaType) mutate.Addendum {
	return mutate.Addendum{
		Layer:     &blobLayer{l: l, mt: lmt},
		MediaType: lmt,
		Annotations: map[string]string{
			AnnotationVersion:    OverlaybdVersion,
			AnnotationBlobDigest: l.Digest,
			AnnotationBlobSize:   strconv.FormatInt(l.Size, 10),
		},
	}
}

// BuildImage makes the image of committed overlaybd layers (bottom first) with cfg
// as its config, diff_ids replaced by the blob digests.
func BuildImage(layers []Layer, cfg *v1.ConfigFile, oci bool) (v1.Image, error) {
	mt, cmt, lmt := mediaTypes(oci)
	img := mutate.MediaType(empty.Image, mt)
	img = mutate.ConfigMediaType(img, cmt)
	cfg = cfg.DeepCopy()
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = nil
	for _, l := range layers {
		add := layerAddendum(l, lmt)
		var err error
		if img, err = mutate.Append(img, add); err != nil {
			return nil, err
		}
		h, _ := add.Layer.DiffID()
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, h)
	}
	return mutate.ConfigFile(img, cfg)
}

// ConvertImage converts every layer of src in order (in opts.WorkDir) and returns
// the overlaybd image. The config is src's with diff_ids replaced.
func ConvertImage(src v1.Image, opts ImageOptions) (v1.Image, error) {
	cfg, err := src.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("convert: source config: %w", err)
	}
	ls, err := src.Layers()
	if err != nil {
		return nil, fmt.Errorf("convert: source layers: %w", err)
	}
	b, err := NewBuilder(opts.Options)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	// Layer i+1 is downloaded and decompressed while layer i is applied and
	// committed (see spool).
	spools := make([]*spool, len(ls))
	// On failure the producers stop at their next chunk; waiting for them keeps
	// them from writing into WorkDir after the return (the caller removes it).
	var producers sync.WaitGroup
	defer func() {
		for _, s := range spools {
			if s != nil {
				s.Close()
			}
		}
		producers.Wait()
	}()
	fetch := func(i int) error {
		if i >= len(ls) || spools[i] != nil {
			return nil
		}
		diffID, err := ls[i].DiffID()
		if err != nil {
			return fmt.Errorf("convert: layer %d: %w", i, err)
		}
		// The compressed stream, its digest checked by go-containerregistry.
		blob, err := ls[i].Compressed()
		if err != nil {
			return fmt.Errorf("convert: layer %d (%s): %w", i, diffID, err)
		}
		s := newSpool(filepath.Join(opts.WorkDir, fmt.Sprintf("source-%04d.tar", i)), diffID.String())
		spools[i] = s
		producers.Go(func() {
			rc, err := uncompressed(blob)
			if err != nil {
				s.finish(fmt.Errorf("layer %d (%s): %w", i, diffID, err))
				return
			}
			s.fill(rc)
		})
		return nil
	}
	for i := range ls {
		if err := fetch(i); err != nil {
			return nil, err
		}
		if err := fetch(i + 1); err != nil {
			return nil, err
		}
		out, err := b.addLayer(spools[i], spools[i].diffID, true)
		spools[i].Close()
		if err != nil {
			return nil, err
		}
		opts.log().Info("layer converted", zap.Int("layer", i), zap.String("src_diff_id", out.SrcDiffID),
			zap.String("blob", out.Digest), zap.Int64("blob_size", out.Size), zap.Int64("changed_bytes", out.ChangedBytes),
			zap.Int("entries", out.Stats.Entries))
		if opts.Progress != nil {
			opts.Progress(i, len(ls), out)
		}
	}
	return BuildImage(b.Layers(), cfg, opts.OCI)
}

// ConvertIndex converts each image of an index selected by opts.Platform, each in
// its own work subdirectory, and returns the index of the converted images.
func ConvertIndex(src v1.ImageIndex, opts ImageOptions) (v1.ImageIndex, error) {
	im, err := src.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("convert: source index: %w", err)
	}
	mt := types.DockerManifestList
	if opts.OCI {
		mt = types.OCIImageIndex
	}
	out := mutate.IndexMediaType(empty.Index, mt)
	n := 0
	for i, d := range im.Manifests {
		if !d.MediaType.IsImage() || d.Platform == nil || d.Platform.OS == "unknown" {
			continue // attestations and nested indexes
		}
		if opts.Platform != nil && !opts.Platform(d.Platform) {
			continue
		}
		img, err := src.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("convert: manifest %d (%s): %w", i, d.Digest, err)
		}
		o := opts
		o.WorkDir = filepath.Join(opts.WorkDir, fmt.Sprintf("platform-%02d", i))
		conv, err := ConvertImage(img, o)
		if err != nil {
			return nil, fmt.Errorf("convert: platform %s: %w", d.Platform, err)
		}
		p := *d.Platform
		out = mutate.AppendManifests(out, mutate.IndexAddendum{Add: conv, Descriptor: v1.Descriptor{Platform: &p}})
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("convert: no image in the index matches the platform")
	}
	return out, nil
}
