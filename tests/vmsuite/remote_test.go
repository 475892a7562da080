//go:build vmsuite

package vmsuite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obd-project/obd/registry/registrytest"
)

// The converted hello-world image as an OCI layout (copied into the guest's /work).
var helloLayout = filepath.Join(work, "hello-world-oci")

const helloBlobSize = 642560

// f) an image reference served from a registry on the guest's loopback through
// /dev/ublkbN: /hello is right, each blob byte crossed the network at most once,
// and a second attach on the same cache takes nothing from the registry.
func TestRemoteImageReference(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, helloLayout, "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/hello-world:amd64-converted"
	d := newDaemon(t, "--cache-dir", filepath.Join(t.TempDir(), "cache"))
	defer d.stop(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	for round := 0; round < 2; round++ {
		before := proxy.BlobBytes()
		out, err := d.obd("attach", "--frontend", "ublk", ref)
		if err != nil {
			t.Fatalf("round %d: attach %s: %v\n%s\n%s", round, ref, err, out, d.log())
		}
		dev := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
		if !strings.HasPrefix(dev, "/dev/ublkb") {
			t.Fatalf("attach printed %q first, not a /dev/ublkbN path", dev)
		}
		must(t, "mount", "-t", "ext4", "-o", "ro", dev, mnt)
		hf, err := os.Open(filepath.Join(mnt, "hello"))
		if err != nil {
			t.Fatal(err)
		}
		if got := shaOf(hf); got != helloSHA {
			t.Errorf("round %d: /hello sha256 %s", round, got)
		}
		hf.Close()
		must(t, "umount", mnt)
		if out, err := d.obd("detach", dev); err != nil {
			t.Fatalf("detach %s: %v\n%s", dev, err, out)
		}
		fetched := proxy.BlobBytes() - before
		t.Logf("round %d: %d blob bytes from the registry", round, fetched)
		switch {
		case round == 0 && (fetched <= 1 || fetched > helloBlobSize+1): // +1: the cold open's probe byte
			t.Errorf("first attach fetched %d blob bytes; want 2..%d (each byte at most once)", fetched, helloBlobSize+1)
		case round == 1 && fetched != 0:
			t.Errorf("second attach on a warm cache fetched %d blob bytes, want 0", fetched)
		}
	}
}
