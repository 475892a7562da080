package snapshotter

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/storage"
)

// fakeDevices serves every config with a copy of one image file, as the FUSE
// frontend serves an image file.
type fakeDevices struct {
	mu       sync.Mutex
	image    string
	dir      string
	next     int
	attached map[string]string // id -> config path
	attaches []string
	// serve, when set, makes the device's content from the config (else image).
	serve func(configPath string) (string, error)
}

func (f *fakeDevices) Attach(_ context.Context, configPath string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	id := fmt.Sprint(f.next)
	path := filepath.Join(f.dir, "dev"+id)
	src := f.image
	if f.serve != nil {
		var err error
		if src, err = f.serve(configPath); err != nil {
			return "", "", err
		}
	}
	if out, err := exec.Command("cp", "--sparse=always", src, path).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("cp: %v %s", err, out)
	}
	f.attached[id] = configPath
	f.attaches = append(f.attaches, configPath)
	return id, path, nil
}

func (f *fakeDevices) Detach(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.attached[id]; !ok {
		return fmt.Errorf("device %s: %w", id, errdefs.ErrNotFound)
	}
	delete(f.attached, id)
	return nil
}

func (f *fakeDevices) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.attached)
}

// fakeObd stands for obd's layer tools: create makes empty DATA and INDEX files,
// seal leaves them as they are.
var fakeObd = []string{"sh", "-c", `case "$1" in
create) shift; while [ "${1#-}" != "$1" ]; do shift; done; : > "$1"; : > "$2";;
seal) ;;
*) exit 1;;
esac`, "obd"}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mount)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("needs /dev/loop-control")
	}
}

// newTestSnapshotter returns a snapshotter over fake devices serving an ext4 image.
func newTestSnapshotter(t *testing.T, mutate func(*BootConfig)) (*Snapshotter, *fakeDevices) {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "ext4.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	cfg := DefaultBootConfig()
	cfg.Root = filepath.Join(dir, "root")
	if mutate != nil {
		mutate(cfg)
	}
	devs := &fakeDevices{image: img, dir: dir, attached: map[string]string{}}
	sn, err := New(cfg, devs, fakeObd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l").Run()
		// A read-only layer's outer loop device sits on the loop device over the file.
		exec.Command("sh", "-c", "for l in $(losetup --list --noheadings --output NAME,BACK-FILE | grep ' "+dir+"/' | cut -d' ' -f1); do "+
			"losetup --list --noheadings --output NAME,BACK-FILE | grep \" $l\\$\" | cut -d' ' -f1 | xargs -r -n1 losetup -d; losetup -d $l; done").Run()
		sn.Close()
	})
	return sn, devs
}

func remoteLabels(ref, digest, chainID string) map[string]string {
	return map[string]string{
		LabelTargetRef:   chainID,
		LabelCRIImageRef: ref,
		LabelBlobDigest:  digest,
		LabelBlobSize:    "1234",
	}
}

// prepareRemote runs containerd's unpack step for a remote layer: Prepare must
// commit at once and answer ErrAlreadyExists.
func prepareRemote(t *testing.T, sn *Snapshotter, parent, chainID, digest string) {
	t.Helper()
	_, err := sn.Prepare(context.Background(), "extract-1 "+chainID, parent,
		snapshots.WithLabels(remoteLabels("127.0.0.1:5000/library/hello:v1", digest, chainID)))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a remote layer: %v, want ErrAlreadyExists", err)
	}
	info, err := sn.Stat(context.Background(), chainID)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Labels[LabelRemote] != remoteLabelValue {
		t.Fatalf("%s: kind %v labels %v, want a committed remote snapshot", chainID, info.Kind, info.Labels)
	}
}

func snapshotID(t *testing.T, sn *Snapshotter, key string) string {
	t.Helper()
	var id string
	err := sn.ms.WithTransaction(context.Background(), false, func(ctx context.Context) (err error) {
		id, _, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRemoteLayersConfig(t *testing.T) {
	sn, devs := newTestSnapshotter(t, nil)
	d1 := "sha256:" + strings.Repeat("1", 64)
	d2 := "sha256:" + strings.Repeat("2", 64)
	prepareRemote(t, sn, "", "chain1", d1)
	prepareRemote(t, sn, "chain1", "chain2", d2)
	if devs.count() != 0 {
		t.Errorf("%d devices attached by an image pull, want 0 (lazy)", devs.count())
	}
	id := snapshotID(t, sn, "chain2")
	p := sn.configPath(id)
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config.v1.json mode %v, want 0600", st.Mode().Perm())
	}
	var c struct {
		RepoBlobURL string `json:"repoBlobUrl"`
		Lowers      []struct {
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
			Dir    string `json:"dir"`
		} `json:"lowers"`
		ResultFile string `json:"resultFile"`
	}
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.RepoBlobURL != "http://127.0.0.1:5000/v2/library/hello/blobs" {
		t.Errorf("repoBlobUrl %q", c.RepoBlobURL)
	}
	if len(c.Lowers) != 2 || c.Lowers[0].Digest != d1 || c.Lowers[1].Digest != d2 || c.Lowers[1].Size != 1234 ||
		c.Lowers[1].Dir != sn.fsDir(id) {
		t.Errorf("lowers %+v: want the parent's layer then this one, with dir %s", c.Lowers, sn.fsDir(id))
	}
	if c.ResultFile != filepath.Join(sn.blockDir(id), "init-debug.log") {
		t.Errorf("resultFile %q", c.ResultFile)
	}
}

func TestRepoBlobURL(t *testing.T) {
	sn := &Snapshotter{cfg: DefaultBootConfig()}
	sn.cfg.MirrorRegistry = []Registry{{Host: "mirror.example:5000", Insecure: true}}
	for ref, want := range map[string]string{
		"hello-world:latest": "https://registry-1.docker.io/v2/library/hello-world/blobs",
		"ghcr.io/a/b:v1":     "https://ghcr.io/v2/a/b/blobs",
		"mirror.example:5000/x/y@sha256:" + strings.Repeat("a", 64): "http://mirror.example:5000/v2/x/y/blobs",
		"localhost:5000/z:t": "http://localhost:5000/v2/z/blobs",
	} {
		got, err := sn.repoBlobURL(ref)
		if err != nil || got != want {
			t.Errorf("repoBlobURL(%q) = %q, %v; want %q", ref, got, err, want)
		}
	}
	if _, err := sn.repoBlobURL("UPPER/case::"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad reference: %v, want invalid argument", err)
	}
}

func hasOption(m mount.Mount, prefix string) string {
	for _, o := range m.Options {
		if strings.HasPrefix(o, prefix) {
			return o
		}
	}
	return ""
}

// TestContainerOnRemoteLayer: a container attaches the top layer's device once,
// mounts it read-only and stacks its overlay upper on it; the device stays while
// another container uses it and goes with the last one (autoRemoveDev).
func TestContainerOnRemoteLayer(t *testing.T) {
	needRoot(t)
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.AutoRemoveDev = true })
	ctx := context.Background()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	id := snapshotID(t, sn, "chain1")
	var mounts [][]mount.Mount
	for _, key := range []string{"c1", "c2"} {
		m, err := sn.Prepare(ctx, key, "chain1")
		if err != nil {
			t.Fatal(err)
		}
		mounts = append(mounts, m)
	}
	if len(devs.attaches) != 1 || devs.attaches[0] != sn.configPath(id) {
		t.Fatalf("attaches %v, want one of %s", devs.attaches, sn.configPath(id))
	}
	m := mounts[0]
	if len(m) != 1 || m[0].Type != "overlay" || hasOption(m[0], "lowerdir=") != "lowerdir="+sn.mountpoint(id) {
		t.Fatalf("mounts %+v: want overlay on %s", m, sn.mountpoint(id))
	}
	if !isMountPoint(sn.mountpoint(id)) {
		t.Fatalf("%s is not mounted", sn.mountpoint(id))
	}
	mark, _ := os.ReadFile(filepath.Join(sn.blockDir(id), "backstore_mark"))
	if !strings.HasPrefix(string(mark), "/dev/loop") {
		t.Errorf("backstore_mark %q, want the loop device", mark)
	}
	// The read-only layer is mounted from a loop device over the loop device over
	// the image file, which a restarted daemon can move (recover.go).
	rec, err := readDeviceRecord(sn.blockDir(id))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Inner == "" || loopBackingFile(rec.Block) != rec.Inner || loopBackingFile(rec.Inner) != rec.Path {
		t.Errorf("device record %+v: want %s over %s over %s", rec, rec.Block, rec.Inner, rec.Path)
	}
	// A restarted snapshotter finds the device and the mount.
	sn.Close()
	sn2, err := New(sn.cfg, devs, fakeObd)
	if err != nil {
		t.Fatal(err)
	}
	defer sn2.Close()
	if m2, err := sn2.Mounts(ctx, "c1"); err != nil || hasOption(m2[0], "lowerdir=") != hasOption(m[0], "lowerdir=") {
		t.Fatalf("Mounts after a restart: %+v %v", m2, err)
	}
	if len(devs.attaches) != 1 {
		t.Errorf("a restart attached again: %v", devs.attaches)
	}
	if err := sn2.Remove(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if devs.count() != 1 || !isMountPoint(sn.mountpoint(id)) {
		t.Fatalf("device gone while c2 still uses it")
	}
	if err := sn2.Remove(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if devs.count() != 0 || isMountPoint(sn.mountpoint(id)) {
		t.Errorf("device still attached (%d) or mounted after the last container's removal", devs.count())
	}
	for _, l := range []string{rec.Block, rec.Inner} {
		if f := loopBackingFile(l); f != "" {
			t.Errorf("%s still over %s after the last container's removal", l, f)
		}
	}
	if err := sn2.Remove(ctx, "chain1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sn.snDir(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot directory left: %v", err)
	}
}

// TestDevModeMountType: rwMode dev returns the block device with the real file
// system type found by its superblock (ACI always says ext4).
func TestDevModeMountType(t *testing.T) {
	needRoot(t)
	for _, fsType := range []string{"ext4", "erofs"} {
		t.Run(fsType, func(t *testing.T) {
			sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.RwMode = RwDev })
			if fsType == "erofs" {
				// An image with only the erofs magic: detection reads the superblock alone.
				f, err := os.OpenFile(devs.image, os.O_WRONLY|os.O_TRUNC, 0)
				if err != nil {
					t.Fatal(err)
				}
				var sb [4]byte
				binary.LittleEndian.PutUint32(sb[:], 0xE0F5E1E2)
				f.WriteAt(sb[:], 1024)
				f.Truncate(16 << 20)
				f.Close()
			}
			ctx := context.Background()
			prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
			m, err := sn.Prepare(ctx, "c1", "chain1")
			if err != nil {
				t.Fatal(err)
			}
			if len(m) != 1 || !strings.HasPrefix(m[0].Source, "/dev/loop") || m[0].Type != fsType || hasOption(m[0], "discard") == "" {
				t.Fatalf("dev mode mounts %+v: want the loop device, type %s, discard", m, fsType)
			}
			id := snapshotID(t, sn, "c1")
			c, err := sn.readConfig(id)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Lowers) != 1 || c.Upper.Data != filepath.Join(sn.blockDir(id), "writable_data") ||
				c.Upper.Index != filepath.Join(sn.blockDir(id), "writable_index") {
				t.Errorf("writable config %+v", c)
			}
			if err := sn.Remove(ctx, "c1"); err != nil {
				t.Fatal(err)
			}
			if devs.count() != 0 {
				t.Errorf("%d devices after removal", devs.count())
			}
		})
	}
}

// TestOrdinaryLayersOverlay: plain OCI layers fall back to overlayfs over the
// layers' directories, as containerd's overlay snapshotter.
func TestOrdinaryLayersOverlay(t *testing.T) {
	// rwMode dev too: a writable device goes only on an overlaybd layer.
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.RwMode = RwDev })
	ctx := context.Background()
	m, err := sn.Prepare(ctx, "extract-1 l1", "", snapshots.WithLabels(map[string]string{LabelTargetRef: "l1"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || m[0].Type != "bind" || hasOption(m[0], "rw") == "" {
		t.Fatalf("first layer mounts %+v: want a rw bind", m)
	}
	if err := os.WriteFile(filepath.Join(m[0].Source, "a"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "l1", "extract-1 l1"); err != nil {
		t.Fatal(err)
	}
	m, err = sn.Prepare(ctx, "c1", "l1")
	if err != nil {
		t.Fatal(err)
	}
	id := snapshotID(t, sn, "l1")
	if len(m) != 1 || m[0].Type != "overlay" || hasOption(m[0], "lowerdir=") != "lowerdir="+sn.fsDir(id) {
		t.Fatalf("container mounts %+v: want overlay on %s", m, sn.fsDir(id))
	}
	if sn.isBlock(id) || devs.count() != 0 {
		t.Errorf("an ordinary layer became a device layer")
	}
	if u, err := sn.Usage(ctx, "l1"); err != nil || u.Size == 0 {
		t.Errorf("Usage: %+v %v", u, err)
	}
}

func TestLoadBootConfig(t *testing.T) {
	dir := t.TempDir()
	c, err := LoadBootConfig(filepath.Join(dir, "missing.json"))
	if err != nil || c.RwMode != "overlayfs" || c.Address != "/run/overlaybd-snapshotter/overlaybd.sock" ||
		c.Root != "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd" || c.Tenant != -1 || c.DefaultFsType != "ext4" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	p := filepath.Join(dir, "c.json")
	os.WriteFile(p, []byte(`{"root":"/r","rwMode":"dev","writableLayerType":"sparse","autoRemoveDev":true,"mirrorRegistry":[{"host":"m","insecure":true}]}`), 0o644)
	c, err = LoadBootConfig(p)
	if err != nil || c.Root != "/r" || c.RwMode != "dev" || c.WritableLayerType != "sparse" || !c.AutoRemoveDev || len(c.MirrorRegistry) != 1 {
		t.Fatalf("loaded: %+v %v", c, err)
	}
	os.WriteFile(p, []byte(`{"rwMode":"block"}`), 0o644)
	if _, err := LoadBootConfig(p); err == nil || !strings.Contains(err.Error(), "rwMode") {
		t.Errorf("bad rwMode: %v", err)
	}
	os.WriteFile(p, []byte(`{"root":`), 0o644)
	if _, err := LoadBootConfig(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("truncated JSON: %v", err)
	}
}

// TestDirModeAndView: rwMode dir mounts the container's own writable device and
// binds it; a view of a device layer is a read-only bind of its mount.
func TestDirModeAndView(t *testing.T) {
	needRoot(t)
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.RwMode = RwDir })
	ctx := context.Background()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	m, err := sn.Prepare(ctx, "c1", "chain1")
	if err != nil {
		t.Fatal(err)
	}
	id := snapshotID(t, sn, "c1")
	if len(m) != 1 || m[0].Type != "bind" || m[0].Source != sn.mountpoint(id) || hasOption(m[0], "rw") == "" {
		t.Fatalf("dir mode mounts %+v: want a rw bind of %s", m, sn.mountpoint(id))
	}
	if !isMountPoint(sn.mountpoint(id)) {
		t.Fatalf("%s not mounted", sn.mountpoint(id))
	}
	if err := os.WriteFile(filepath.Join(sn.mountpoint(id), "w"), []byte("x"), 0o644); err != nil {
		t.Errorf("writing into the dir-mode device: %v", err)
	}
	v, err := sn.View(ctx, "v1", "chain1")
	if err != nil {
		t.Fatal(err)
	}
	lid := snapshotID(t, sn, "chain1")
	if len(v) != 1 || v[0].Type != "bind" || v[0].Source != sn.mountpoint(lid) || hasOption(v[0], "ro") == "" {
		t.Fatalf("view mounts %+v: want a ro bind of %s", v, sn.mountpoint(lid))
	}
	if devs.count() != 2 {
		t.Errorf("%d devices, want 2 (the container's and the layer's)", devs.count())
	}
	// Commit seals the writable layer into fs/overlaybd.sealed, stacked on the
	// parent's lowers: a layer new containers sit on.
	if err := sn.Commit(ctx, "img2", "c1"); err != nil {
		t.Fatalf("Commit of a dir-mode layer: %v", err)
	}
	info, err := sn.Stat(ctx, "img2")
	if err != nil || info.Labels[LabelLocalCommitPath] != filepath.Join(sn.fsDir(id), "overlaybd.sealed") {
		t.Errorf("committed labels %v %v, want %s", info.Labels, err, LabelLocalCommitPath)
	}
	c, err := sn.readConfig(id)
	if err != nil || len(c.Lowers) != 2 || c.Lowers[1].Dir != sn.fsDir(id) || c.Upper.Data != "" {
		t.Errorf("committed config %+v %v: want the parent's lower, then the sealed layer's dir", c, err)
	}
	if isMountPoint(sn.mountpoint(id)) || devs.count() != 2-1 {
		t.Errorf("the committed layer's writable device is still attached (%d devices)", devs.count())
	}
	if _, err := sn.Prepare(ctx, "c2", "img2"); err != nil {
		t.Fatalf("a container on the committed layer: %v", err)
	}
	if last := devs.attaches[len(devs.attaches)-1]; filepath.Dir(filepath.Dir(last)) == sn.snDir(id) {
		t.Errorf("c2 attached the committed layer's own config, want its own writable layer")
	}
	for _, k := range []string{"c2", "img2", "v1", "chain1"} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Fatalf("Remove %s: %v", k, err)
		}
	}
	if devs.count() != 0 {
		t.Errorf("%d devices after removing everything", devs.count())
	}
}

// TestCleanupSkipsSnapshotsInCreation: Cleanup removes directories the metadata
// does not know, except those of snapshots being created.
func TestCleanupSkipsSnapshotsInCreation(t *testing.T) {
	sn, _ := newTestSnapshotter(t, nil)
	root := filepath.Join(sn.root, "snapshots")
	os.Mkdir(filepath.Join(root, "new-123"), 0o755)
	os.Mkdir(filepath.Join(root, "99"), 0o755)
	if err := sn.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "new-123")); err != nil {
		t.Errorf("Cleanup removed a snapshot in creation: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "99")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Cleanup left an unknown snapshot directory: %v", err)
	}
}

// TestConcurrentContainersShareOneDevice: containers prepared at once on one layer
// attach its device once; removing them all (autoRemoveDev) detaches it once.
func TestConcurrentContainersShareOneDevice(t *testing.T) {
	needRoot(t)
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.AutoRemoveDev = true })
	ctx := context.Background()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := sn.Prepare(ctx, fmt.Sprintf("c%d", i), "chain1")
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(devs.attaches) != 1 {
		t.Fatalf("%d attaches for 8 containers on one layer, want 1", len(devs.attaches))
	}
	errs = make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- sn.Remove(ctx, fmt.Sprintf("c%d", i))
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if devs.count() != 0 {
		t.Errorf("%d devices after removing every container", devs.count())
	}
}

// TestSecondInstanceRefused: a second snapshotter on the same root fails at once
// instead of waiting for the database lock forever.
func TestSecondInstanceRefused(t *testing.T) {
	sn, devs := newTestSnapshotter(t, nil)
	if _, err := New(sn.cfg, devs, fakeObd); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second instance: %v, want an in-use error", err)
	}
}

// loopBackingFile is what the loop device dev reads ("" when unbound).
func loopBackingFile(dev string) string {
	b, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	return strings.TrimSpace(string(b))
}

// TestDeadLoopAttachedAgain: a dir-mode container's loop device that no longer
// reads its device file (the obd daemon died, and a restarted one could not move
// a writable loop device) is unmounted, detached and attached again at the next
// Mounts, e.g. when the container is started again.
func TestDeadLoopAttachedAgain(t *testing.T) {
	needRoot(t)
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.RwMode = RwDir })
	ctx := context.Background()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	if _, err := sn.Prepare(ctx, "c1", "chain1"); err != nil {
		t.Fatal(err)
	}
	id := snapshotID(t, sn, "c1")
	old, err := readDeviceRecord(sn.blockDir(id))
	if err != nil {
		t.Fatal(err)
	}
	if loopDead(old) {
		t.Fatalf("a fresh device %+v reported dead", old)
	}
	// The loop device keeps reading the old file under another name, as it keeps
	// a dead FUSE mount's file.
	if err := os.Rename(old.Path, old.Path+".dead"); err != nil {
		t.Fatal(err)
	}
	if !loopDead(old) {
		t.Fatalf("device %+v over a file gone from its path not reported dead", old)
	}
	if _, err := sn.Mounts(ctx, "c1"); err != nil {
		t.Fatalf("Mounts over a dead device: %v", err)
	}
	rec, err := readDeviceRecord(sn.blockDir(id))
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID == old.ID || loopBackingFile(rec.Block) != rec.Path || !isMountPoint(sn.mountpoint(id)) {
		t.Errorf("after Mounts: %+v (old %+v), mounted %v; want a new device over its file, mounted", rec, old, isMountPoint(sn.mountpoint(id)))
	}
	if f := loopBackingFile(old.Block); f != "" && old.Block != rec.Block {
		t.Errorf("the dead loop device %s is still over %s", old.Block, f)
	}
	if devs.count() != 1 {
		t.Errorf("%d devices, want 1 (the container's new one)", devs.count())
	}
	for _, k := range []string{"c1", "chain1"} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Fatalf("Remove %s: %v", k, err)
		}
	}
}
