package snapshotter

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"
)

func TestParseQuota(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "20g": 20 << 30, "512m": 512 << 20, "1.5GiB": 3 << 29, "4096": 4096} {
		if got, err := parseQuota("rootfsQuota", in); err != nil || got != want {
			t.Errorf("parseQuota(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"20x", "g", "-1g", "0", "twenty"} {
		if _, err := parseQuota("rootfsQuota", in); err == nil || !strings.Contains(err.Error(), "rootfsQuota") {
			t.Errorf("parseQuota(%q): %v, want an error naming rootfsQuota", in, err)
		}
	}
}

// TestBootConfigValidatesExtras: values ACI takes as free-form strings fail at load.
func TestBootConfigValidatesExtras(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	for body, msg := range map[string]string{
		`{"rootfsQuota":"20x"}`:                                "rootfsQuota",
		`{"defaultFsType":"ext4;ro,,x"}`:                       "defaultFsType",
		`{"tenant":-2}`:                                        "tenant",
		`{"turboFsType":["btrfs"]}`:                            "turboFsType",
		`{"exporterConfig":{"enable":true,"port":0}}`:          "exporterConfig.port",
		`{"exporterConfig":{"enable":true,"uriPrefix":"m"}}`:   "exporterConfig.uriPrefix",
		`{"exporterConfig":{"enable":true,"port":70000}}`:      "exporterConfig.port",
		`{"rootfsQuota":"20g","tenant":3,"defaultFsType":"x"}`: "",
	} {
		os.WriteFile(p, []byte(body), 0o644)
		_, err := LoadBootConfig(p)
		if msg == "" && err != nil || msg != "" && (err == nil || !strings.Contains(err.Error(), msg)) {
			t.Errorf("%s: %v, want an error naming %q", body, err, msg)
		}
	}
}

// TestRootfsQuotaSizesWritableLayer: in dir and dev modes the quota (config, or the
// disk_quota label) is the writable layer's virtual size; the vsize label wins.
func TestRootfsQuotaSizesWritableLayer(t *testing.T) {
	needRoot(t)
	sn, _ := newTestSnapshotter(t, func(c *BootConfig) { c.RwMode = RwDev; c.RootfsQuota = "20g" })
	ctx := context.Background()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	for key, tc := range map[string]struct {
		labels map[string]string
		want   int
	}{
		"c1": {nil, 20},
		"c2": {map[string]string{LabelDiskQuota: "1500m"}, 2},
		"c3": {map[string]string{LabelDiskQuota: "1500m", LabelVsize: "7"}, 7},
	} {
		if _, err := sn.Prepare(ctx, key, "chain1", snapshots.WithLabels(tc.labels)); err != nil {
			t.Fatal(err)
		}
		c, err := sn.readConfig(snapshotID(t, sn, key))
		if err != nil || c.Upper.Vsize != tc.want {
			t.Errorf("%s (labels %v): upper %+v %v, want vsize %d GB", key, tc.labels, c.Upper, err, tc.want)
		}
	}
	_, err := sn.Prepare(ctx, "c4", "chain1", snapshots.WithLabels(map[string]string{LabelDiskQuota: "lots"}))
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), LabelDiskQuota) {
		t.Errorf("bad disk_quota label: %v, want invalid argument naming the label", err)
	}
}

// TestRootfsQuotaNeedsPrjquota: an overlayfs container with a quota on a file system
// without project quotas fails (as in ACI) instead of running without its limit;
// image layers being unpacked get no quota.
func TestRootfsQuotaNeedsPrjquota(t *testing.T) {
	sn, _ := newTestSnapshotter(t, func(c *BootConfig) { c.RootfsQuota = "1g" })
	ctx := context.Background()
	if _, err := sn.Prepare(ctx, "extract-1 l1", "", snapshots.WithLabels(map[string]string{LabelTargetRef: "l1"})); err != nil {
		t.Fatalf("unpacking a layer: %v", err)
	}
	if mountOpts(sn.root, "prjquota") {
		t.Skip("the test directory is on a prjquota file system")
	}
	_, err := sn.Prepare(ctx, "c1", "")
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "prjquota") {
		t.Fatalf("container with rootfsQuota without prjquota: %v, want a failed precondition naming prjquota", err)
	}
	if _, err := sn.Stat(ctx, "c1"); !errdefs.IsNotFound(err) {
		t.Errorf("the failed container's snapshot stays: %v", err)
	}
}

func mountOpts(dir, opt string) bool {
	out, err := exec.Command("findmnt", "-n", "-o", "VFS-OPTIONS,FS-OPTIONS", "--target", dir).Output()
	return err == nil && strings.Contains(string(out), opt)
}

// TestRootfsQuotaEnforced: on an ext4 file system mounted with prjquota, a
// container's upper directory cannot grow beyond rootfsQuota.
func TestRootfsQuotaEnforced(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "q.img"), filepath.Join(dir, "mnt")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "quota,project", img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-o", "loop,prjquota", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("no ext4 project quota on this kernel (CONFIG_QUOTA): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	cfg := DefaultBootConfig()
	cfg.Root = filepath.Join(mnt, "root")
	cfg.RootfsQuota = "2m"
	sn, err := New(cfg, &fakeDevices{attached: map[string]string{}}, fakeObd)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	m, err := sn.Prepare(context.Background(), "c1", "")
	if err != nil {
		t.Fatal(err)
	}
	err = os.WriteFile(filepath.Join(m[0].Source, "big"), make([]byte, 4<<20), 0o644)
	if !errors.Is(err, syscall.EDQUOT) {
		t.Errorf("writing 4 MiB under a 2 MiB rootfsQuota: %v, want EDQUOT", err)
	}
}
