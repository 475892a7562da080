package main

import (
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Pushing a converted image, remote.Write skips every blob the destination
// repository has (HEAD) and, for blobs offered as remote.MountableLayer, asks the
// registry to mount them from the source repository
// (POST /v2/<dst>/blobs/uploads/?mount=<digest>&from=<src>) before uploading: a
// conversion already pushed next to its source (reproducible blobs) is then copied
// inside the registry, not uploaded again. These wrappers offer the layers and the
// config of the converted images so.

// mountableImage offers img's blobs for mounting from repository from.
type mountableImage struct {
	v1.Image
	from name.Reference
}

func (m *mountableImage) Layers() ([]v1.Layer, error) {
	ls, err := m.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		out[i] = &remote.MountableLayer{Layer: l, Reference: m.from}
	}
	return out, nil
}

func (m *mountableImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := m.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return &remote.MountableLayer{Layer: l, Reference: m.from}, nil
}

// ConfigLayer is what remote.Write uploads the config as (see partial.ConfigLayer).
func (m *mountableImage) ConfigLayer() (v1.Layer, error) {
	l, err := partial.ConfigLayer(m.Image)
	if err != nil {
		return nil, err
	}
	return &remote.MountableLayer{Layer: l, Reference: m.from}, nil
}

// mountableIndex offers the blobs of idx's images for mounting from repository
// from. It has no Manifests method, so that remote.WriteIndex takes the images
// through Image.
type mountableIndex struct {
	idx  v1.ImageIndex
	from name.Reference
}

func (m *mountableIndex) MediaType() (types.MediaType, error)       { return m.idx.MediaType() }
func (m *mountableIndex) Digest() (v1.Hash, error)                  { return m.idx.Digest() }
func (m *mountableIndex) Size() (int64, error)                      { return m.idx.Size() }
func (m *mountableIndex) IndexManifest() (*v1.IndexManifest, error) { return m.idx.IndexManifest() }
func (m *mountableIndex) RawManifest() ([]byte, error)              { return m.idx.RawManifest() }

func (m *mountableIndex) Image(h v1.Hash) (v1.Image, error) {
	img, err := m.idx.Image(h)
	if err != nil {
		return nil, err
	}
	return &mountableImage{Image: img, from: m.from}, nil
}

func (m *mountableIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	idx, err := m.idx.ImageIndex(h)
	if err != nil {
		return nil, err
	}
	return &mountableIndex{idx: idx, from: m.from}, nil
}
