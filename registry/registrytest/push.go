package registrytest

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Overlaybd layer annotations (same values as package registry's constants).
const (
	annBlobDigest = "containerd.io/snapshot/overlaybd/blob-digest"
	annBlobSize   = "containerd.io/snapshot/overlaybd/blob-size"
	annVersion    = "containerd.io/snapshot/overlaybd/version"
)

func (r *Registry) writeOpts() []remote.Option {
	user, pass := r.Credentials()
	opts := []remote.Option{remote.WithAuth(authn.Anonymous)}
	if r.cfg.basic || r.cfg.token {
		opts = []remote.Option{remote.WithAuth(&authn.Basic{Username: user, Password: pass})}
	}
	if r.cfg.tls {
		t := r.server.Client().Transport.(*http.Transport).Clone()
		if r.cfg.clientCAs != nil && r.PushCert != nil {
			t.TLSClientConfig.Certificates = []tls.Certificate{*r.PushCert}
		}
		opts = append(opts, remote.WithTransport(t))
	}
	return opts
}

// Ref is a reference into this registry: Ref("repo:tag") = "127.0.0.1:port/repo:tag".
func (r *Registry) Ref(repoAndTag string) string { return r.Host + "/" + repoAndTag }

// PushLayout pushes every manifest of the OCI layout at dir into repo: those with
// an org.opencontainers.image.ref.name annotation under that tag, the others by
// digest. It returns tag → manifest digest.
func (r *Registry) PushLayout(t testing.TB, dir, repo string) map[string]string {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("registrytest: layout %s: %v", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatalf("registrytest: layout %s: %v", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatalf("registrytest: layout %s: %v", dir, err)
	}
	tags := map[string]string{}
	for _, d := range im.Manifests {
		refStr := r.Host + "/" + repo + "@" + d.Digest.String()
		if tag := d.Annotations["org.opencontainers.image.ref.name"]; tag != "" {
			refStr = r.Host + "/" + repo + ":" + tag
			tags[tag] = d.Digest.String()
		}
		ref, err := name.ParseReference(refStr)
		if err != nil {
			t.Fatalf("registrytest: %v", err)
		}
		if d.MediaType.IsIndex() {
			ii, err := idx.ImageIndex(d.Digest)
			if err != nil {
				t.Fatalf("registrytest: layout %s: index %s: %v", dir, d.Digest, err)
			}
			err = remote.WriteIndex(ref, ii, r.writeOpts()...)
		} else {
			img, err2 := idx.Image(d.Digest)
			if err2 != nil {
				t.Fatalf("registrytest: layout %s: image %s: %v", dir, d.Digest, err2)
			}
			err = remote.Write(ref, img, r.writeOpts()...)
		}
		if err != nil {
			t.Fatalf("registrytest: push %s: %v", refStr, err)
		}
	}
	return tags
}

// PushImage pushes img as repo:tag and returns the manifest digest.
func (r *Registry) PushImage(t testing.TB, repo, tag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatalf("registrytest: %v", err)
	}
	if err := remote.Write(ref, img, r.writeOpts()...); err != nil {
		t.Fatalf("registrytest: push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatalf("registrytest: %v", err)
	}
	return d.String()
}

// PushIndex pushes idx as repo:tag and returns its digest.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, idx v1.ImageIndex) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatalf("registrytest: %v", err)
	}
	if err := remote.WriteIndex(ref, idx, r.writeOpts()...); err != nil {
		t.Fatalf("registrytest: push %s: %v", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatalf("registrytest: %v", err)
	}
	return d.String()
}

// GeneratedImage is an image with deterministic pseudo-random layer blobs.
type GeneratedImage struct {
	Image v1.Image
	Blobs [][]byte // layer blobs, bottom first
}

// OverlaybdImage builds an image whose layers carry the overlaybd annotations
// (media type application/vnd.oci.image.layer.v1.tar, as converted images have),
// with pseudo-random blobs of the given sizes. The blobs are not real overlaybd
// layers: it exercises the network path only.
func OverlaybdImage(t testing.TB, seed uint64, sizes ...int) GeneratedImage {
	return generate(t, seed, true, sizes)
}

// PlainImage is OverlaybdImage without the annotations and with gzip layer media
// types: an image Resolve must reject.
func PlainImage(t testing.TB, seed uint64, sizes ...int) GeneratedImage {
	return generate(t, seed, false, sizes)
}

func generate(t testing.TB, seed uint64, overlaybd bool, sizes []int) GeneratedImage {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	g := GeneratedImage{}
	for _, n := range sizes {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		g.Blobs = append(g.Blobs, b)
	}
	g.Image = layersImage(t, overlaybd, g.Blobs)
	return g
}

// LayersImage builds an image of the given layer blobs (bottom first), annotated
// as overlaybd layers the way converted images are: for real overlaybd blobs
// (tar-wrapped ZFile/LSMT, e.g. from `obd import --tar`).
func LayersImage(t testing.TB, blobs ...[]byte) v1.Image {
	t.Helper()
	return layersImage(t, true, blobs)
}

func layersImage(t testing.TB, overlaybd bool, blobs [][]byte) v1.Image {
	t.Helper()
	var adds []mutate.Addendum
	for _, b := range blobs {
		mt := types.OCILayer
		if overlaybd {
			mt = types.OCIUncompressedLayer
		}
		l := static.NewLayer(bytes.Clone(b), mt)
		a := mutate.Addendum{Layer: l, MediaType: mt}
		if overlaybd {
			d, err := l.Digest()
			if err != nil {
				t.Fatalf("registrytest: %v", err)
			}
			a.Annotations = map[string]string{annBlobDigest: d.String(), annBlobSize: strconv.Itoa(len(b)), annVersion: "0.1.0"}
		}
		adds = append(adds, a)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	base, err := mutate.ConfigFile(base, &v1.ConfigFile{Architecture: "amd64", OS: "linux", RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatalf("registrytest: build image: %v", err)
	}
	img, err := mutate.Append(base, adds...)
	if err != nil {
		t.Fatalf("registrytest: build image: %v", err)
	}
	if _, err := img.Manifest(); err != nil {
		t.Fatalf("registrytest: build image: %v", fmt.Errorf("manifest: %w", err))
	}
	return img
}
