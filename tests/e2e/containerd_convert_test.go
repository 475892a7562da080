package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/obd-project/obd/registry/registrytest"
)

// catSource is a static program for the converted multi-layer image, which has no
// shell: it prints each file named on its command line, or "PATH: missing".
const catSource = `package main

import (
	"fmt"
	"os"
)

func main() {
	for _, p := range os.Args[1:] {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Printf("%s: missing\n", p)
			continue
		}
		fmt.Printf("%s: %s\n", p, b)
	}
}
`

// TestContainerdRunConverted: an ordinary image converted by the `obd convert`
// binary runs with containerd and obd's snapshotter (issue 12's "Done when"):
// the bundled hello-world image (Docker manifest, one gzip layer), and a
// three-layer image whose upper layers overwrite and whiteout files of the ones
// below, so that the container sees the merged tree of the converted stack.
func TestContainerdRunConverted(t *testing.T) {
	e := startContainerdEnv(t, map[string]any{"autoRemoveDev": true})
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	rpull := func(ref string) {
		t.Helper()
		if out, err := run(t, 2*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, ref); err != nil {
			t.Fatalf("obd rpull %s: %v\n%s\n%s", ref, err, out, e.logs())
		}
	}
	convert := func(src, dst string) {
		t.Helper()
		start := time.Now()
		out, err := run(t, 2*time.Minute, bin("obd"), "convert", src, dst)
		if err != nil {
			t.Fatalf("obd convert %s %s: %v\n%s", src, dst, err, out)
		}
		t.Logf("obd convert %s: %v", src, time.Since(start).Round(time.Millisecond))
	}

	src, dst := reg.Ref("hello-world:amd64"), reg.Ref("hello-world:amd64-obd")
	convert(src, dst)
	rpull(dst)
	if out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", dst, "c1"); !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("ctr run of the converted hello-world printed:\n%s", out)
	}
	e.mustCtr(t, "image", "rm", "--sync", dst)
	if n := e.waitDevices(t, 0); n != 0 {
		t.Errorf("%d devices after the image's removal, want 0", n)
	}

	// Three layers: hello-world's; /cat, /etc/msg and /etc/gone; a new /etc/msg
	// and a whiteout of /etc/gone.
	catBin := buildStaticGo(t, catSource)
	layer2 := convTestLayer(t, []convTestEntry{
		{name: "cat", mode: 0o755, data: catBin},
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/msg", mode: 0o644, data: []byte("from layer 2")},
		{name: "etc/gone", mode: 0o644, data: []byte("deleted by layer 3")},
	})
	layer3 := convTestLayer(t, []convTestEntry{
		{name: "etc/msg", mode: 0o644, data: []byte("from layer 3")},
		{name: "etc/.wh.gone", mode: 0o644},
	})
	img, err := mutate.AppendLayers(helloAmd64Image(t), layer2, layer3)
	if err != nil {
		t.Fatal(err)
	}
	reg.PushImage(t, "layers", "plain", img)
	src, dst = reg.Ref("layers:plain"), reg.Ref("layers:obd")
	convert(src, dst)
	rpull(dst)
	out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", dst, "c1", "/cat", "/etc/msg", "/etc/gone", "/hello")
	for _, want := range []string{"/etc/msg: from layer 3\n", "/etc/gone: missing\n", "Hello from Docker!"} {
		if !strings.Contains(out, want) {
			t.Errorf("ctr run of the converted 3-layer image: no %q in:\n%s", want, out)
		}
	}
	converted, err := remote.Image(insecureRef(t, dst))
	if err != nil {
		t.Fatal(err)
	}
	if ls, _ := converted.Layers(); len(ls) != 3 {
		t.Errorf("converted image has %d layers, want 3", len(ls))
	}
}

// helloAmd64Image is the bundled hello-world amd64 image with its Docker manifest.
func helloAmd64Image(t *testing.T) v1.Image {
	t.Helper()
	p, err := layout.FromPath(golden + "/hello-world-oci")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] == "amd64" {
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatal("no amd64 image in the hello-world layout")
	return nil
}

func insecureRef(t testing.TB, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// buildStaticGo compiles a one-file Go program without cgo and returns the binary.
func buildStaticGo(t testing.TB, source string) []byte {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(source), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module cat\n\ngo 1.21\n"), 0o644)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", "cat", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build of the static cat: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "cat"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type convTestEntry struct {
	name string
	mode int64
	dir  bool
	data []byte
}

// convTestLayer is a gzip layer (Docker media type) of the given entries.
func convTestLayer(t *testing.T, entries []convTestEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, en := range entries {
		h := &tar.Header{Name: en.name, Mode: en.mode, Typeflag: tar.TypeReg, Size: int64(len(en.data)), ModTime: mtime}
		if en.dir {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(en.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}
