package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/obd-project/obd/ext4"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
)

// sourceImage is an ordinary OCI image (gzip layers) of the test layers.
func sourceImage(t *testing.T) v1.Image {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, es := range testLayers() {
		data := makeTar(t, es)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
			tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func testClient(t *testing.T) *registry.Client {
	c, err := registry.NewClient(registry.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestRegistryRoundTrip(t *testing.T) {
	reg := registrytest.New(t)
	srcRef := reg.Ref("src/app:v1")
	reg.PushImage(t, "src/app", "v1", sourceImage(t))
	ctx := context.Background()
	c := testClient(t)

	convertTo := func(dst string) string {
		ref, err := c.ParseReference(srcRef)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref, c.RemoteOptions(ctx)...)
		if err != nil {
			t.Fatal(err)
		}
		out, err := ConvertImage(img, ImageOptions{Options: Options{WorkDir: t.TempDir(), VSize: 256 << 20}, OCI: true})
		if err != nil {
			t.Fatal(err)
		}
		dref, err := c.ParseReference(dst)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(dref, out, c.RemoteOptions(ctx)...); err != nil {
			t.Fatal(err)
		}
		d, _ := out.Digest()
		return d.String()
	}
	d1 := convertTo(reg.Ref("dst/app:obd"))
	d2 := convertTo(reg.Ref("dst/app:obd-again"))
	if d1 != d2 {
		t.Fatalf("two conversions give manifests %s and %s", d1, d2)
	}

	// The image as a client sees it: annotations, media types, diff_ids, layers.
	im, err := c.ResolveManifest(ctx, reg.Ref("dst/app:obd"))
	if err != nil {
		t.Fatal(err)
	}
	if err := im.CheckOverlaybd(); err != nil {
		t.Fatal(err)
	}
	ref, _ := c.ParseReference(reg.Ref("dst/app:obd"))
	img, err := remote.Image(ref, c.RemoteOptions(ctx)...)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	cfg, _ := img.ConfigFile()
	if m.MediaType != types.OCIManifestSchema1 || len(m.Layers) != 3 || len(cfg.RootFS.DiffIDs) != 3 || cfg.Config.Entrypoint[0] != "/bin/sh" {
		t.Fatalf("manifest %+v config %+v", m, cfg)
	}
	dir := t.TempDir()
	var paths []string
	mdl := newModel(t)
	for i, d := range m.Layers {
		if d.MediaType != types.OCIUncompressedLayer || d.Annotations[AnnotationVersion] != "0.1.0" ||
			d.Annotations[AnnotationBlobDigest] != d.Digest.String() || d.Annotations[AnnotationBlobSize] != strconv.FormatInt(d.Size, 10) ||
			cfg.RootFS.DiffIDs[i] != d.Digest {
			t.Fatalf("layer %d descriptor %+v, diff_id %s", i, d, cfg.RootFS.DiffIDs[i])
		}
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, strconv.Itoa(i))
		f, _ := os.Create(p)
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(f, h), rc); err != nil {
			t.Fatal(err)
		}
		f.Close()
		rc.Close()
		if "sha256:"+hex.EncodeToString(h.Sum(nil)) != d.Digest.String() {
			t.Fatalf("layer %d: blob digest mismatch", i)
		}
		paths = append(paths, p)
		// Every layer prefix is a consistent file system with the expected tree.
		mdl.apply(testLayers()[i])
		st := stack(t, paths)
		mdl.check(st, st.Size())
		fsck(t, st)
	}
	// LSMT uuids follow the source chainIDs, parents chained.
	var chain string
	srcImg, _ := remote.Image(mustRef(t, c, srcRef), c.RemoteOptions(ctx)...)
	srcCfg, _ := srcImg.ConfigFile()
	for i, p := range paths {
		chain = NextChainID(chain, srcCfg.RootFS.DiffIDs[i].String())
		want, _ := ChainUUID(chain)
		st := stack(t, []string{p})
		if got := st.Lowers()[0].UUID(); got != want {
			t.Fatalf("layer %d uuid %s, want %s", i, got, want)
		}
		if i > 0 {
			prev, _ := ChainUUID(NextChainID("", srcCfg.RootFS.DiffIDs[0].String()))
			if i == 1 && st.Lowers()[0].ParentUUID() != prev {
				t.Fatalf("layer 1 parent uuid %s, want %s", st.Lowers()[0].ParentUUID(), prev)
			}
		}
	}
}

func mustRef(t *testing.T, c *registry.Client, s string) name.Reference {
	r, err := c.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestHelloWorld(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, "../testdata/golden/hello-world-oci", "library/hello-world")
	ctx := context.Background()
	c := testClient(t)
	img, err := remote.Image(mustRef(t, c, reg.Ref("library/hello-world:amd64")), c.RemoteOptions(ctx)...)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	out, err := ConvertImage(img, ImageOptions{Options: Options{WorkDir: work}})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := out.Manifest()
	if m.MediaType != types.DockerManifestSchema2 || len(m.Layers) != 1 || m.Layers[0].MediaType != types.DockerUncompressedLayer {
		t.Fatalf("manifest %+v", m)
	}
	st := stack(t, []string{filepath.Join(work, "0000", "overlaybd.commit")})
	if st.Size() != DefaultVSize {
		t.Fatalf("virtual size %d", st.Size())
	}
	f, err := ext4.Open(st, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	in, err := f.Lookup("/hello")
	if err != nil {
		t.Fatal(err)
	}
	data, err := f.ReadFile(in, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if s := sha256.Sum256(data); hex.EncodeToString(s[:]) != "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014" {
		t.Fatalf("/hello: sha256 %x", s)
	}
	stat, _ := f.Stat(in.Num)
	if stat.Mode != ext4.ModeRegular|0o775 { // as in the tar
		t.Fatalf("/hello mode %o", stat.Mode)
	}

	// The multi-platform list converts to an index of every platform.
	idx, err := remote.Index(mustRef(t, c, reg.Ref("library/hello-world:docker-list")), c.RemoteOptions(ctx)...)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := idx.IndexManifest()
	conv, err := ConvertIndex(idx, ImageOptions{Options: Options{WorkDir: t.TempDir(), VSize: 64 << 20}, OCI: true})
	if err != nil {
		t.Fatal(err)
	}
	cm, _ := conv.IndexManifest()
	if cm.MediaType != types.OCIImageIndex || len(cm.Manifests) == 0 || len(cm.Manifests) > len(src.Manifests) {
		t.Fatalf("index %+v from %d manifests", cm, len(src.Manifests))
	}
	for _, d := range cm.Manifests {
		if d.Platform == nil || d.Platform.OS != "linux" {
			t.Fatalf("manifest %+v without platform", d)
		}
	}
}
