package e2e

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/obd-project/obd/registry/registrytest"
	"github.com/obd-project/obd/tarwrap"
)

// busyboxLayer builds a one-layer overlaybd blob: a 64 GiB ext4 disk holding a
// static busybox, a few applet links and the extra files (path: content).
func busyboxLayer(t *testing.T, extra map[string][]byte) []byte {
	t.Helper()
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		if out, err := run(t, 10*time.Minute, "apt-get", "install", "-y", "--no-install-recommends", "busybox-static"); err != nil {
			t.Fatalf("needs a static busybox, and apt-get install busybox-static failed: %v\n%s", err, out)
		}
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	mustRun(t, "cp", bb, filepath.Join(root, "bin", "busybox"))
	for _, a := range []string{"sh", "sleep", "cat", "echo", "grep", "ls", "md5sum", "dd"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	for p, b := range extra {
		if err := os.WriteFile(filepath.Join(root, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw := filepath.Join(dir, "raw")
	mustRun(t, "mkfs.ext4", "-q", "-F", "-d", root, raw, "64G")
	layer := filepath.Join(dir, "layer.tar")
	mustRun(t, bin("obd"), "-q", "import", "--compress", "lz4", "--tar", raw, layer)
	b, err := os.ReadFile(layer)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func superblockMagic(t *testing.T, dev string) uint16 {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [2]byte
	if _, err := f.ReadAt(b[:], 1080); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint16(b[:])
}

func withCmd(t *testing.T, img v1.Image, cmd ...string) v1.Image {
	t.Helper()
	img, err := mutate.Config(img, v1.Config{Env: []string{"PATH=/bin"}, Cmd: cmd})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestContainerdLifecycle: a container writes into its overlay upper on the lazily
// served image; the snapshotter restarts (now in rwMode dev) while it runs and the
// container keeps reading its files; a dev-mode container gets the block device with
// its real file system type and writes into its own writable layer; the image
// layer's device stays while used and goes with the image (autoRemoveDev off).
// A two-layer image (the empty ext4 base layer under hello-world) runs too.
func TestContainerdLifecycle(t *testing.T) {
	e := startContainerdEnv(t, nil)
	reg := registrytest.New(t)
	reg.PushImage(t, "busybox", "obd", withCmd(t, registrytest.LayersImage(t, busyboxLayer(t, nil)), "sh"))
	base, err := os.ReadFile(extractBase(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	hello, err := os.ReadFile(helloBlob)
	if err != nil {
		t.Fatal(err)
	}
	wrappedBase := append(append(tarwrap.Header(int64(len(base))), base...), tarwrap.Trailer(int64(len(base)))...)
	reg.PushImage(t, "hello2", "obd", withCmd(t, registrytest.LayersImage(t, wrappedBase, hello), "/hello"))
	bbRef := reg.Ref("busybox:obd")
	helloRef := reg.Ref("hello2:obd")

	for _, ref := range []string{bbRef, helloRef} {
		if out, err := run(t, 2*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, ref); err != nil {
			t.Fatalf("obd rpull %s: %v\n%s\n%s", ref, err, out, e.logs())
		}
	}
	if out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", helloRef, "h1"); !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("two-layer image: ctr run printed:\n%s", out)
	}

	e.mustCtr(t, "run", "-d", "--snapshotter", "overlaybd", bbRef, "c1", "sh", "-c", "echo kept > /data; exec sleep 3600")
	readData := func(execID string) string {
		t.Helper()
		var out string
		// The container's shell writes /data right after it starts.
		for i := 0; i < 100; i++ {
			out, _ = e.ctr(t, "task", "exec", "--exec-id", execID+strings.Repeat("x", i%2), "c1", "cat", "/data")
			if strings.Contains(out, "kept") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		return out
	}
	if out := readData("e1"); !strings.Contains(out, "kept") {
		t.Fatalf("cat /data in c1: %q\n%s", out, e.logs())
	}

	// Restart the snapshotter in rwMode dev (sparse writable layers) while c1 runs.
	stopProc(e.snap)
	os.WriteFile(e.snapCfg, []byte(`{"root":"`+e.snapRoot+`","address":"`+e.snapSock+`","rwMode":"dev","writableLayerType":"sparse"}`), 0o644)
	e.startSnapshotter(t)
	if out := readData("e2"); !strings.Contains(out, "kept") {
		t.Fatalf("cat /data in c1 after a snapshotter restart: %q\n%s", out, e.logs())
	}
	if out := e.mustCtr(t, "task", "exec", "--exec-id", "e3", "c1", "ls", "/bin"); !strings.Contains(out, "busybox") {
		t.Fatalf("ls /bin in c1 after a snapshotter restart: %q", out)
	}

	out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", bbRef, "c2", "sh", "-c", "echo written > /w && cat /w && grep ' / ' /proc/mounts")
	if !strings.Contains(out, "written") {
		t.Fatalf("dev-mode container: %q\n%s", out, e.logs())
	}
	if !strings.Contains(out, "/dev/loop") || !strings.Contains(out, " / ext4 ") {
		t.Errorf("dev-mode container's root is not the ext4 block device: %q", out)
	}

	// Commit of a dev-mode container's writable layer: sealed into a read-only layer
	// that a new snapshot stacks on, with the container's file in it.
	snap := []string{"snapshots", "--snapshotter", "overlaybd"}
	e.mustCtr(t, "run", "--snapshotter", "overlaybd", bbRef, "c3", "sh", "-c", "echo committed > /c")
	e.mustCtr(t, append(snap, "commit", "img-c3", "c3")...)
	if sealed, _ := filepath.Glob(filepath.Join(e.snapRoot, "snapshots", "*", "fs", "overlaybd.sealed")); len(sealed) != 1 {
		t.Errorf("%d overlaybd.sealed after the commit, want 1", len(sealed))
	}
	e.mustCtr(t, append(snap, "prepare", "p1", "img-c3")...)
	out = e.mustCtr(t, append(snap, "mounts", "/mnt", "p1")...)
	if dev := regexp.MustCompile(`-t ext4 (/dev/loop\d+)`).FindStringSubmatch(out); dev == nil {
		t.Errorf("mounts of a snapshot on a committed layer: %q, want an ext4 loop device", out)
	} else {
		mnt := filepath.Join(e.dir, "mnt-p1")
		os.Mkdir(mnt, 0o755)
		mustRun(t, "mount", "-t", "ext4", "-o", "ro", dev[1], mnt)
		got, err := os.ReadFile(filepath.Join(mnt, "c"))
		mustRun(t, "umount", mnt)
		if err != nil || string(got) != "committed\n" {
			t.Errorf("/c on the committed layer: %q, %v; want \"committed\"", got, err)
		}
	}
	e.mustCtr(t, append(snap, "rm", "p1")...)
	e.ctr(t, "container", "rm", "c3") // its snapshot is committed already
	e.mustCtr(t, append(snap, "rm", "img-c3")...)

	// A writable snapshot without a parent gets a freshly formatted disk (mkfs).
	e.mustCtr(t, append(snap, "prepare", "empty1")...)
	out = e.mustCtr(t, append(snap, "mounts", "/mnt", "empty1")...)
	if dev := regexp.MustCompile(`-t ext4 (/dev/loop\d+)`).FindStringSubmatch(out); dev == nil {
		t.Errorf("mounts of a parentless dev-mode snapshot: %q, want an ext4 loop device", out)
	} else if magic := superblockMagic(t, dev[1]); magic != 0xEF53 {
		t.Errorf("%s: superblock magic %#x, want ext4's 0xef53 (formatted)", dev[1], magic)
	}
	e.mustCtr(t, append(snap, "rm", "empty1")...)

	e.mustCtr(t, "task", "kill", "-s", "KILL", "c1")
	for i := 0; i < 100; i++ {
		if _, err := e.ctr(t, "task", "rm", "c1"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.mustCtr(t, "container", "rm", "c1")
	// Without autoRemoveDev, an image layer's device stays until the image goes: the
	// busybox layer (c1 mounted it; c2 had its own device, gone with c2) and the top
	// hello-world layer.
	if n := e.waitDevices(t, 2); n != 2 {
		t.Errorf("%d devices after the containers' removal, want 2 (the image layers')", n)
	}
	e.mustCtr(t, "image", "rm", "--sync", bbRef, helloRef)
	if n := e.waitDevices(t, 0); n != 0 {
		t.Errorf("%d devices after the images' removal, want 0", n)
	}
	if n := e.snapshotDirs(t); n != 0 {
		t.Errorf("%d snapshot directories after the images' removal, want 0", n)
	}
}
