package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/obd-project/obd/ext4"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/registry/registrytest"
)

func rootfsTar(t *testing.T) string {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h tar.Header, data string) {
		h.Size, h.ModTime = int64(len(data)), time.Unix(1_700_000_000, 0)
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(data))
	}
	add(tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}, "")
	add(tar.Header{Typeflag: tar.TypeReg, Name: "etc/os-release", Mode: 0o644}, "ID=obd\n")
	add(tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "os-release", Mode: 0o777}, "")
	add(tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}, "")
	add(tar.Header{Typeflag: tar.TypeReg, Name: "bin/tool", Mode: 0o4755, Uid: 0, PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}}, strings.Repeat("tool", 5000))
	tw.Close()
	p := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func readLayerFile(t *testing.T, path, file string) []byte {
	t.Helper()
	lf, err := layer.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	img, err := lsmt.NewImage([]*lsmt.Layer{lf.Layer}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ext4.Open(img, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	in, err := f.Lookup(file)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.ReadFile(in, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConvertFromTarLayout(t *testing.T) {
	tarPath := rootfsTar(t)
	work := t.TempDir()
	out1 := filepath.Join(t.TempDir(), "layout")
	d1 := strings.TrimSpace(mustObd(t, "convert", "--from-tar", tarPath, "--vsize", "1", "--work-dir", work, out1))
	if !strings.HasPrefix(d1, "sha256:") {
		t.Fatalf("digest %q", d1)
	}
	if _, err := os.Stat(filepath.Join(out1, "index.json")); err != nil {
		t.Fatal(err)
	}
	if got := readLayerFile(t, filepath.Join(work, "0000", "overlaybd.commit"), "/etc/os-release"); string(got) != "ID=obd\n" {
		t.Fatalf("os-release %q", got)
	}
	// Again, later, in another work dir: the same bytes.
	time.Sleep(1100 * time.Millisecond) // a second later: no wall-clock time may reach the output
	d2 := strings.TrimSpace(mustObd(t, "convert", "--from-tar", tarPath, "--vsize", "1", filepath.Join(t.TempDir(), "layout")))
	if d1 != d2 {
		t.Fatalf("two conversions: %s and %s", d1, d2)
	}
	if out, err := obd(t, "convert", "--from-tar", tarPath, "--fstype", "xfs", filepath.Join(t.TempDir(), "x")); err == nil || !strings.Contains(out, "only ext4") {
		t.Fatalf("--fstype xfs: %v %s", err, out)
	}
	if out, err := obd(t, "convert", "--from-tar", tarPath, "a", "b"); err == nil || !strings.Contains(out, "want 1 arguments") {
		t.Fatalf("extra argument: %v %s", err, out)
	}
	// zstd with 16 KiB blocks: a different blob that reads back the same.
	zwork := t.TempDir()
	d3 := strings.TrimSpace(mustObd(t, "convert", "--from-tar", tarPath, "--vsize", "1", "--algorithm", "zstd", "--block-size", "16K", "--work-dir", zwork, filepath.Join(t.TempDir(), "layout")))
	if d3 == d1 {
		t.Fatal("zstd and lz4 conversions have the same digest")
	}
	if got := readLayerFile(t, filepath.Join(zwork, "0000", "overlaybd.commit"), "/bin/tool"); string(got) != strings.Repeat("tool", 5000) {
		t.Fatalf("/bin/tool: %d bytes", len(got))
	}
}

func TestConvertPushRegistry(t *testing.T) {
	reg := registrytest.New(t)
	tarPath := rootfsTar(t)
	work := t.TempDir()
	d1 := strings.TrimSpace(mustObd(t, "convert", "--from-tar", tarPath, "--vsize", "1", "--work-dir", work, reg.Ref("app:obd")))

	ref, _ := name.ParseReference(reg.Ref("app:obd"), name.Insecure)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	if m.MediaType != types.DockerManifestSchema2 || len(m.Layers) != 1 || m.Layers[0].Annotations["containerd.io/snapshot/overlaybd/version"] != "0.1.0" {
		t.Fatalf("manifest %+v", m)
	}
	// obd push of the same committed layer gives the same image.
	d2 := strings.TrimSpace(mustObd(t, "push", filepath.Join(work, "0000", "overlaybd.commit"), reg.Ref("pushed:v1")))
	if d1 != d2 {
		t.Fatalf("convert pushed %s, push of its layer %s", d1, d2)
	}
	// An image converted from the registry (the one just pushed is a valid source:
	// its layer is a tar) keeps the source config.
	d3 := strings.TrimSpace(mustObd(t, "convert", "--oci", "--vsize", "1", reg.Ref("app:obd"), reg.Ref("app:obd-of-obd")))
	ref3, _ := name.ParseReference(reg.Ref("app:obd-of-obd"), name.Insecure)
	img3, err := remote.Image(ref3)
	if err != nil {
		t.Fatal(err)
	}
	if dg, _ := img3.Digest(); dg.String() != d3 {
		t.Fatalf("pushed %s, printed %s", dg, d3)
	}
	if mt, _ := img3.MediaType(); mt != types.OCIManifestSchema1 {
		t.Fatalf("--oci: media type %s", mt)
	}
	if out, err := obd(t, "push", tarPath, reg.Ref("bad:v1")); err == nil || !strings.Contains(out, "not an overlaybd layer") {
		t.Fatalf("push of a plain tar: %v %s", err, out)
	}
}

// The whole conversion runs as nobody, without capabilities.
func TestConvertUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to uid 65534 (as non-root the other tests already run unprivileged)")
	}
	dir, err := os.MkdirTemp("", "obd-unpriv")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	tarPath := filepath.Join(dir, "rootfs.tar")
	data, _ := os.ReadFile(rootfsTar(t))
	os.WriteFile(tarPath, data, 0o644)
	// The binary must be reachable by nobody: copy it.
	bin := filepath.Join(dir, "obd")
	b, _ := os.ReadFile(obdBin)
	os.WriteFile(bin, b, 0o755)
	run := func(out string) string {
		cmd := exec.Command(bin, "-q", "convert", "--from-tar", tarPath, "--vsize", "1", "--work-dir", filepath.Join(dir, "work"+filepath.Base(out)), out)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Env = []string{"HOME=" + dir, "TMPDIR=" + dir}
		o, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("as uid 65534: %v\n%s", err, o)
		}
		return strings.TrimSpace(string(o))
	}
	asNobody := run(filepath.Join(dir, "layout-nobody"))
	asRoot := strings.TrimSpace(mustObd(t, "convert", "--from-tar", tarPath, "--vsize", "1", filepath.Join(t.TempDir(), "layout")))
	if asNobody != asRoot {
		t.Fatalf("as nobody %s, as root %s", asNobody, asRoot)
	}
}

// TestPushBase: obd push --base stacks a committed layer on an overlaybd image in
// the registry (its layers and config stay); a base with an ordinary layer and
// --base with --oci are refused.
func TestPushBase(t *testing.T) {
	reg := registrytest.New(t)
	tarPath := rootfsTar(t)
	work := t.TempDir()
	mustObd(t, "convert", "--from-tar", tarPath, "--vsize", "1", "--work-dir", work, reg.Ref("app:obd"))
	top := filepath.Join(work, "0000", "overlaybd.commit")
	d := strings.TrimSpace(mustObd(t, "push", "--base", reg.Ref("app:obd"), top, reg.Ref("app:stacked")))
	ref, _ := name.ParseReference(reg.Ref("app:stacked"), name.Insecure)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	if dg, _ := img.Digest(); dg.String() != d {
		t.Fatalf("pushed %s, printed %s", dg, d)
	}
	m, _ := img.Manifest()
	cfg, _ := img.ConfigFile()
	if len(m.Layers) != 2 || m.Layers[1].Annotations["containerd.io/snapshot/overlaybd/blob-digest"] != m.Layers[1].Digest.String() ||
		len(cfg.RootFS.DiffIDs) != 2 || m.MediaType != types.DockerManifestSchema2 {
		t.Fatalf("stacked image: manifest %+v, diff_ids %v", m, cfg.RootFS.DiffIDs)
	}
	if out, err := obd(t, "push", "--base", reg.Ref("app:obd"), "--oci", top, reg.Ref("app:x")); err == nil || !strings.Contains(out, "drop --config/--oci") {
		t.Errorf("--base with --oci: %v %s", err, out)
	}
	plain, _ := name.ParseReference(reg.Ref("plain:v1"), name.Insecure)
	rimg, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(plain, rimg); err != nil {
		t.Fatal(err)
	}
	if out, err := obd(t, "push", "--base", reg.Ref("plain:v1"), top, reg.Ref("app:y")); err == nil || !strings.Contains(out, "not an overlaybd image") {
		t.Errorf("--base of an ordinary image: %v %s", err, out)
	}
}

// blobsOf lists the distinct blob digests (configs and layers) of the image or
// index at ref.
func blobsOf(t *testing.T, ref string) map[string]bool {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	var imgs []v1.Image
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		im, _ := idx.IndexManifest()
		for _, d := range im.Manifests {
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			imgs = append(imgs, img)
		}
	} else {
		img, err := desc.Image()
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	blobs := map[string]bool{}
	for _, img := range imgs {
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		blobs[m.Config.Digest.String()] = true
		for _, l := range m.Layers {
			blobs[l.Digest.String()] = true
		}
	}
	return blobs
}

func digestSet(ds []string) map[string]bool {
	s := map[string]bool{}
	for _, d := range ds {
		s[d] = true
	}
	return s
}

// Pushing a conversion uploads no blob the destination repository has (HEAD) and
// mounts the blobs the source repository has instead of uploading them, for an
// image and for an index.
func TestConvertPushMountsAndSkips(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithRepoScopedBlobs())
	var src v1.Image = empty.Image
	for _, p := range []string{rootfsTar(t), rootfsTar(t)} {
		l, err := tarball.LayerFromFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if src, err = mutate.AppendLayers(src, l); err != nil {
			t.Fatal(err)
		}
	}
	// A second layer that differs from the first.
	extra := filepath.Join(t.TempDir(), "extra.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/extra", Mode: 0o644, Size: 5, ModTime: time.Unix(1, 0)})
	tw.Write([]byte("extra"))
	tw.Close()
	os.WriteFile(extra, buf.Bytes(), 0o644)
	l, err := tarball.LayerFromFile(extra)
	if err != nil {
		t.Fatal(err)
	}
	if src, err = mutate.AppendLayers(src, l); err != nil {
		t.Fatal(err)
	}
	cfg, _ := src.ConfigFile()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	if src, err = mutate.ConfigFile(src, cfg); err != nil {
		t.Fatal(err)
	}
	reg.PushImage(t, "src/app", "v1", src)
	arm := cfg.DeepCopy()
	arm.Architecture = "arm64"
	srcArm, err := mutate.ConfigFile(src, arm)
	if err != nil {
		t.Fatal(err)
	}
	reg.PushIndex(t, "src/multi", "v1", mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: src, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: srcArm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}}))

	for _, tag := range []string{"app", "multi"} {
		srcRepo := "src/" + tag
		// Next to its source: the converted blobs are uploaded there.
		before := len(reg.BlobUploads(srcRepo))
		d1 := mustObd(t, "convert", "--vsize", "1", reg.Ref(srcRepo+":v1"), reg.Ref(srcRepo+":obd"))
		converted := blobsOf(t, reg.Ref(srcRepo+":obd"))
		if got := digestSet(reg.BlobUploads(srcRepo)[before:]); len(got) != len(converted) {
			t.Fatalf("%s: uploaded %v into the source repository, want the %d blobs of %v", tag, got, len(converted), converted)
		}
		// Into another repository: every blob is mounted from the source one.
		dst := "dst/" + tag
		d2 := mustObd(t, "convert", "--vsize", "1", reg.Ref(srcRepo+":v1"), reg.Ref(dst+":obd"))
		if d1 != d2 {
			t.Fatalf("%s: conversions gave %s and %s", tag, d1, d2)
		}
		if ups := reg.BlobUploads(dst); len(ups) != 0 {
			t.Errorf("%s: uploaded %v, want every blob mounted", tag, ups)
		}
		if got := digestSet(reg.BlobMounts(dst)); len(got) != len(converted) || len(reg.BlobMounts(dst)) != len(converted) {
			t.Errorf("%s: mounted %v, want each of %v once", tag, reg.BlobMounts(dst), converted)
		} else {
			for d := range converted {
				if !got[d] {
					t.Errorf("%s: %s not mounted", tag, d)
				}
			}
		}
		// Again into that repository: the blobs are there (HEAD), nothing moves.
		mustObd(t, "convert", "--vsize", "1", reg.Ref(srcRepo+":v1"), reg.Ref(dst+":obd-again"))
		if ups, ms := reg.BlobUploads(dst), reg.BlobMounts(dst); len(ups) != 0 || len(ms) != len(converted) {
			t.Errorf("%s: second push into %s: uploads %v, mounts %v", tag, dst, ups, ms)
		}
		// The mounted image is whole: every blob of it can be fetched from dst.
		r, _ := name.ParseReference(reg.Ref(dst+":obd"), name.Insecure)
		for d := range converted {
			rc, err := remote.Layer(r.Context().Digest(d))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, mustCompressed(t, rc)); err != nil {
				t.Errorf("%s: blob %s in %s: %v", tag, d, dst, err)
			}
		}
	}
}

func mustCompressed(t *testing.T, l v1.Layer) io.Reader {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return rc
}
