package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// TestContainerdCommitPush: a container (rwMode dir: its own writable device
// layer) writes a file; `ctr snapshots commit` seals its writable layer; the
// sealed layer, named by the committed snapshot's localcommitpath label, is
// packed with `obd commit --sealed -z -t` and pushed on top of the image's
// layers with `obd push --base`; the new image, lazily pulled, runs and sees
// the file.
func TestContainerdCommitPush(t *testing.T) {
	e := startContainerdEnv(t, map[string]any{"rwMode": "dir"})
	reg := registrytest.New(t)
	reg.PushImage(t, "busybox", "obd", withCmd(t, registrytest.LayersImage(t, busyboxLayer(t, nil)), "sh"))
	base := reg.Ref("busybox:obd")
	rpull := func(ref string) {
		t.Helper()
		if out, err := run(t, 2*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, ref); err != nil {
			t.Fatalf("obd rpull %s: %v\n%s\n%s", ref, err, out, e.logs())
		}
	}
	rpull(base)
	// runc keeps its state per namespace and id under /run: ids of this test's own.
	const writer = "commit-c1"
	t.Cleanup(func() { e.killTask(t, writer) })
	e.mustCtr(t, "run", "--snapshotter", "overlaybd", base, writer, "sh", "-c", "echo from-the-container > /new.txt")

	snap := []string{"snapshots", "--snapshotter", "overlaybd"}
	e.mustCtr(t, append(snap, "commit", "committed-c1", writer)...)
	var info struct{ Labels map[string]string }
	out := e.mustCtr(t, append(snap, "info", "committed-c1")...)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("ctr snapshots info: %v\n%s", err, out)
	}
	sealed := info.Labels["containerd.io/snapshot/overlaybd.localcommitpath"]
	if !strings.HasPrefix(sealed, filepath.Join(e.snapRoot, "snapshots")+"/") || !strings.HasSuffix(sealed, "/fs/overlaybd.sealed") {
		t.Fatalf("localcommitpath label %q, want <root>/snapshots/<id>/fs/overlaybd.sealed", sealed)
	}
	layerTar := filepath.Join(t.TempDir(), "layer.tar")
	if out, err := run(t, 2*time.Minute, bin("obd"), "commit", "--sealed", "-z", "lz4", "-t", sealed, layerTar); err != nil {
		t.Fatalf("obd commit --sealed: %v\n%s", err, out)
	}
	if _, err := os.Stat(sealed); err != nil {
		t.Errorf("the committed snapshot's sealed layer is gone after obd commit: %v", err)
	}
	pushed := reg.Ref("busybox:committed")
	if out, err := run(t, 2*time.Minute, bin("obd"), "push", "--base", base, layerTar, pushed); err != nil {
		t.Fatalf("obd push --base: %v\n%s", err, out)
	}

	rpull(pushed)
	out = e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", pushed, "commit-c2", "sh", "-c", "cat /new.txt && ls /bin")
	if !strings.Contains(out, "from-the-container") || !strings.Contains(out, "busybox") {
		t.Errorf("container of the pushed image: %q, want the committed /new.txt and the base's /bin/busybox\n%s", out, e.logs())
	}
}
