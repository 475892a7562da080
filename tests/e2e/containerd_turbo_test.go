package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/obd-project/obd/registry/registrytest"
)

// turboRef is the reference's TurboOCI data (testdata/golden/reference/README.md,
// d_ext4): layer0.tar.gz, its ext4 meta t0.fsmeta and its gzip index t0.gzip.meta.
const turboRef = golden + "/reference/d_ext4"

func gzLayer(t *testing.T, gz []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(gz)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// pushTurboImage pushes, as ACI's convertor makes them, a TurboOCI image of
// layer0.tar.gz into repo: the original layer as a blob of the repository, and an
// image whose one layer is the meta tarball (ext4.fs.meta, gzip.meta, .turbo.ociv1)
// annotated with the original's digest and media type.
func pushTurboImage(t *testing.T, reg *registrytest.Registry, repo string) string {
	t.Helper()
	target, err := os.ReadFile(turboRef + "/layer0.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	targetImg, err := mutate.AppendLayers(empty.Image, gzLayer(t, target))
	if err != nil {
		t.Fatal(err)
	}
	reg.PushImage(t, repo, "original", targetImg) // puts the original layer's blob in the repository

	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, src := range map[string]string{"ext4.fs.meta": "t0.fsmeta", "gzip.meta": "t0.gzip.meta", ".turbo.ociv1": ""} {
		var b []byte
		if src != "" {
			if b, err = os.ReadFile(filepath.Join(turboRef, src)); err != nil {
				t.Fatal(err)
			}
		}
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)})
		tw.Write(b)
	}
	tw.Close()
	zw.Close()
	meta := gzLayer(t, buf.Bytes())
	md, _ := meta.Digest()
	img, err := mutate.ConfigFile(mutate.MediaType(empty.Image, types.OCIManifestSchema1), &v1.ConfigFile{Architecture: "amd64", OS: "linux"})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: meta, MediaType: types.OCILayer, Annotations: map[string]string{
		"containerd.io/snapshot/overlaybd/version":                     "0.1.0-turbo.ociv1",
		"containerd.io/snapshot/overlaybd/blob-digest":                 md.String(),
		"containerd.io/snapshot/overlaybd/blob-size":                   fmt.Sprint(buf.Len()),
		"containerd.io/snapshot/overlaybd/turbo-oci/target-digest":     fmt.Sprintf("sha256:%x", sha256.Sum256(target)),
		"containerd.io/snapshot/overlaybd/turbo-oci/target-media-type": string(types.OCILayer),
	}})
	if err != nil {
		t.Fatal(err)
	}
	reg.PushImage(t, repo, "turbo", img)
	return reg.Ref(repo + ":turbo")
}

// TestContainerdTurboOCI: `obd rpull` of a TurboOCI image unpacks its meta layer (the
// snapshotter does not serve it as a lazy overlaybd blob), the snapshotter's config
// stacks the ext4 meta over the original layer fetched from the registry by digest
// through the gzip index, and a container sees the original layer's files.
func TestContainerdTurboOCI(t *testing.T) {
	e := startContainerdEnv(t, map[string]any{"autoRemoveDev": true})
	reg := registrytest.New(t)
	ref := pushTurboImage(t, reg, "turbo")
	if out, err := run(t, 2*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, ref); err != nil {
		t.Fatalf("obd rpull: %v\n%s\n%s", err, out, e.logs())
	}
	metas, _ := filepath.Glob(filepath.Join(e.snapRoot, "snapshots", "*", "fs", "ext4.fs.meta"))
	cfgs, _ := filepath.Glob(filepath.Join(e.snapRoot, "snapshots", "*", "block", "config.v1.json"))
	if len(metas) != 1 || len(cfgs) != 1 {
		t.Fatalf("after rpull: %d ext4.fs.meta, %d config.v1.json; want the unpacked meta layer and its config\n%s", len(metas), len(cfgs), e.logs())
	}
	cfg, _ := os.ReadFile(cfgs[0])
	for _, want := range []string{`"targetDigest": "sha256:a318e29512c63829cc8e5307ecde2715da8b0e87c8779f9deb5c51457bd0e731"`, `"gzipIndex": "`, `"file": "` + metas[0] + `"`} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("config.v1.json lacks %s:\n%s", want, cfg)
		}
	}
	// The image has no program: the host's static busybox is bound into the container.
	out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm",
		"--mount", "type=bind,src=/usr/bin/busybox,dst=/busybox,options=rbind:ro",
		ref, "c1", "/busybox", "sh", "-c", "cat /etc/hostname; /busybox sha256sum /etc/big.bin")
	if !strings.Contains(out, "golden\n") || !strings.Contains(out, "bdbaae95ac7ffa5d29700d38984606c1f8cd0afa9cd40f99a874ba813e366b48") {
		t.Fatalf("the container on the TurboOCI image printed:\n%s\n%s", out, e.logs())
	}
	if n := e.waitDevices(t, 0); n != 0 {
		t.Errorf("%d devices after the container's removal (autoRemoveDev), want 0", n)
	}
	e.mustCtr(t, "image", "rm", "--sync", ref)
	if n := e.snapshotDirs(t); n != 0 {
		t.Errorf("%d snapshot directories after the image's removal, want 0", n)
	}
}
