package convert

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// AppendImage stacks committed overlaybd layers (bottom first) on an existing
// overlaybd image, e.g. a container's sealed writable layer on the image it ran
// from: the base's layers, config and media types stay, the config's diff_ids
// and history grow by the new blobs. Every layer of base must be an overlaybd
// layer (the blob-digest annotation), or the result would mix both kinds.
func AppendImage(base v1.Image, layers []Layer) (v1.Image, error) {
	m, err := base.Manifest()
	if err != nil {
		return nil, fmt.Errorf("base image manifest: %w", err)
	}
	for i, d := range m.Layers {
		if d.Annotations[AnnotationBlobDigest] == "" {
			return nil, fmt.Errorf("base image layer %d (%s) has no %s annotation: not an overlaybd image", i, d.Digest, AnnotationBlobDigest)
		}
	}
	_, _, lmt := mediaTypes(m.MediaType == types.OCIManifestSchema1)
	img := base
	for _, l := range layers {
		add := layerAddendum(l, lmt)
		add.History = v1.History{CreatedBy: "obd push --base"}
		if img, err = mutate.Append(img, add); err != nil {
			return nil, err
		}
	}
	return img, nil
}
