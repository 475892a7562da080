// Command demo is `make demo`: it starts a registry on 127.0.0.1 holding the bundled
// hello-world OverlayBD image and a generated larger one, attaches each with `obd
// attach IMAGE` through the best frontend this machine has (ublk, else FUSE + loop),
// mounts it read-only, shows what it read and how many blob bytes were fetched
// against the image size, then detaches and cleans up. Run as root from the repo root.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var blobBytes atomic.Int64

func main() {
	log.SetFlags(0)
	if os.Geteuid() != 0 {
		log.Fatal("demo: run as root (it mounts file systems)")
	}
	obd, _ := filepath.Abs("bin/obd")
	if _, err := os.Stat(obd); err != nil {
		log.Fatal("demo: bin/obd missing: run `make build` (make demo does)")
	}
	work, err := os.MkdirTemp("", "obd-demo")
	check(err)
	defer os.RemoveAll(work)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	reg := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	go http.Serve(ln, countBlobBytes(reg))
	host := ln.Addr().String()
	fmt.Printf("== registry on %s\n", host)

	// 1. The bundled image, converted by the reference toolchain.
	pushLayout("testdata/golden/hello-world-oci", host+"/hello-world")
	// 2. A larger generated image: an ext4 file system with 64 files of 1 MiB.
	files := generate(filepath.Join(work, "gen"), obd, host+"/generated:latest")

	for _, img := range []struct {
		ref   string
		show  func(mnt string)
		label string
	}{
		{host + "/hello-world:amd64-converted", func(mnt string) {
			run("ls", "-la", mnt)
			fmt.Printf("/hello sha256 %s (expected d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014)\n", fileSHA(filepath.Join(mnt, "hello")))
			out, _ := exec.Command(filepath.Join(mnt, "hello")).Output()
			fmt.Println(strings.Join(strings.Split(string(out), "\n")[:3], "\n"))
		}, "hello-world"},
		{host + "/generated:latest", func(mnt string) {
			entries, _ := os.ReadDir(filepath.Join(mnt, "data"))
			fmt.Printf("/data holds %d files; reading 3 of them:\n", len(entries))
			for _, n := range []string{"f07", "f31", "f58"} {
				got := fileSHA(filepath.Join(mnt, "data", n))
				ok := "ok"
				if got != files[n] {
					ok = "MISMATCH"
				}
				fmt.Printf("  /data/%s sha256 %s… %s\n", n, got[:16], ok)
			}
		}, "generated"},
	} {
		attachAndShow(obd, work, img.ref, img.label, img.show)
	}
	fmt.Println("== done: devices detached, temporary files removed")
}

func attachAndShow(obd, work, ref, label string, show func(string)) {
	fmt.Printf("\n== obd attach %s\n", ref)
	before := blobBytes.Load()
	cmd := exec.Command(obd, "-q", "attach", "--foreground", "--global-config", "/nonexistent",
		"--cache-dir", filepath.Join(work, "cache"), "--run-dir", filepath.Join(work, "run"), ref)
	stdout, err := cmd.StdoutPipe()
	check(err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	check(cmd.Start())
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		cmd.Wait()
		log.Fatalf("attach failed:\n%s", stderr.String())
	}
	dev := sc.Text()
	go io.Copy(io.Discard, stdout)
	fmt.Printf("device: %s\n", dev)
	mnt := filepath.Join(work, "mnt-"+label)
	check(os.MkdirAll(mnt, 0o755))
	opts := "ro"
	if !strings.HasPrefix(dev, "/dev/") {
		opts = "loop,ro" // the FUSE frontend gives an image file
	}
	run("mount", "-t", "ext4", "-o", opts, dev, mnt)
	show(mnt)
	run("umount", mnt)
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		log.Fatalf("detach: %v\n%s", err, stderr.String())
	}
	size := imageBlobSize(ref)
	got := blobBytes.Load() - before
	fmt.Printf("fetched %s of %s of layer blobs (%.1f%%), detached\n", human(got), human(size), 100*float64(got)/float64(size))
}

var blobSizes = map[string]int64{}

func imageBlobSize(ref string) int64 { return blobSizes[ref] }

func pushLayout(dir, repo string) {
	p, err := layout.FromPath(dir)
	check(err)
	idx, err := p.ImageIndex()
	check(err)
	im, err := idx.IndexManifest()
	check(err)
	for _, d := range im.Manifests {
		tag := d.Annotations["org.opencontainers.image.ref.name"]
		if tag == "" || d.MediaType.IsIndex() {
			continue
		}
		img, err := idx.Image(d.Digest)
		check(err)
		ref, err := name.ParseReference(repo+":"+tag, name.Insecure)
		check(err)
		check(remote.Write(ref, img))
		layers, _ := img.Layers()
		var n int64
		for _, l := range layers {
			s, _ := l.Size()
			n += s
		}
		blobSizes[repo+":"+tag] = n
	}
}

// generate builds an ext4 image of 64 random 1 MiB files, imports it as a
// ZFile-compressed, tar-wrapped OverlayBD layer and pushes it as an image.
func generate(dir, obd, ref string) map[string]string {
	fmt.Printf("== generating %s (ext4, 64 files of 1 MiB)\n", ref)
	src := filepath.Join(dir, "root", "data")
	check(os.MkdirAll(src, 0o755))
	sums := map[string]string{}
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for i := 0; i < 64; i++ {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		n := fmt.Sprintf("f%02d", i)
		check(os.WriteFile(filepath.Join(src, n), buf, 0o644))
		s := sha256.Sum256(buf)
		sums[n] = hex.EncodeToString(s[:])
	}
	raw := filepath.Join(dir, "disk.raw")
	run("mkfs.ext4", "-q", "-F", "-d", filepath.Join(dir, "root"), raw, "256M")
	blob := filepath.Join(dir, "layer.tar")
	run(obd, "-q", "import", "-z", "lz4", "--tar", raw, blob)
	b, err := os.ReadFile(blob)
	check(err)
	// The blob is pushed as is (a tar-wrapped ZFile is a valid uncompressed OCI layer).
	layer := static.NewLayer(b, types.OCIUncompressedLayer)
	digest, err := layer.Digest()
	check(err)
	size, err := layer.Size()
	check(err)
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{
		Layer: layer, MediaType: types.OCIUncompressedLayer,
		Annotations: map[string]string{
			"containerd.io/snapshot/overlaybd/blob-digest": digest.String(),
			"containerd.io/snapshot/overlaybd/blob-size":   fmt.Sprint(size),
			"containerd.io/snapshot/overlaybd/version":     "0.1.0",
		},
	})
	check(err)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{Architecture: "amd64", OS: "linux", RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{digest}}})
	check(err)
	r, err := name.ParseReference(ref, name.Insecure)
	check(err)
	check(remote.Write(r, img))
	blobSizes[ref] = size
	return sums
}

func countBlobBytes(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			w = &countingWriter{w}
		}
		h.ServeHTTP(w, r)
	})
}

type countingWriter struct{ http.ResponseWriter }

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	blobBytes.Add(int64(n))
	return n, err
}

func run(name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
}

func fileSHA(p string) string {
	f, err := os.Open(p)
	check(err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	check(err)
	return hex.EncodeToString(h.Sum(nil))
}

func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
