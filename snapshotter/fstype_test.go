package snapshotter

import (
	"bufio"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"
)

func TestParseFsSpec(t *testing.T) {
	for in, want := range map[string]fsSpec{
		"ext4":                   {Type: "ext4"},
		"erofs;":                 {Type: "erofs", mountSet: true},
		"ext4;ro,noatime":        {Type: "ext4", MountOpts: []string{"ro", "noatime"}, mountSet: true},
		"xfs;;-f -m crc=0":       {Type: "xfs", MkfsOpts: []string{"-f", "-m", "crc=0"}, mountSet: true, mkfsSet: true},
		" ext4 ; discard ; -F ":  {Type: "ext4", MountOpts: []string{"discard"}, MkfsOpts: []string{"-F"}, mountSet: true, mkfsSet: true},
		"fuse.x;allow_other;":    {Type: "fuse.x", MountOpts: []string{"allow_other"}, mountSet: true, mkfsSet: true},
		"f2fs;nodiscard;-S -w 4": {Type: "f2fs", MountOpts: []string{"nodiscard"}, MkfsOpts: []string{"-S", "-w", "4"}, mountSet: true, mkfsSet: true},
	} {
		got, err := parseFsSpec("defaultFsType", in)
		if err != nil || got.Type != want.Type || !slices.Equal(got.MountOpts, want.MountOpts) || !slices.Equal(got.MkfsOpts, want.MkfsOpts) ||
			got.mountSet != want.mountSet || got.mkfsSet != want.mkfsSet {
			t.Errorf("parseFsSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"":                 "not a file-system name",
		";ro":              "not a file-system name",
		"EXT4":             "not a file-system name",
		"ext 4":            "not a file-system name",
		"ext4;ro,,noatime": "empty option",
		"ext4;ro, x y":     "blank inside",
		"ext4;ro;-F;more":  "4 ';'-separated parts",
	} {
		if _, err := parseFsSpec("defaultFsType", in); err == nil || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), "defaultFsType") {
			t.Errorf("parseFsSpec(%q): %v, want an error naming defaultFsType with %q", in, err, msg)
		}
	}
}

func TestMountOptions(t *testing.T) {
	spec, _ := parseFsSpec("x", "ext4;noatime,discard")
	for _, tc := range []struct {
		spec   string
		fsType string
		ro     bool
		want   []string
	}{
		{"ext4", "ext4", false, []string{"discard"}},
		{"ext4", "ext4", true, []string{"ro"}},
		{"ext4", "erofs", true, []string{"ro"}},
		{"xfs", "xfs", false, []string{"nouuid", "discard"}},
		{"ext4;noatime,discard", "ext4", false, []string{"noatime", "discard"}},
		{"ext4;noatime,discard", "ext4", true, []string{"ro", "noatime"}},
		{"ext4;noatime", "erofs", true, []string{"ro"}}, // the detected type wins; its defaults apply
		{"ext4;", "ext4", false, nil},
	} {
		spec, _ = parseFsSpec("x", tc.spec)
		if got := spec.mountOptions(tc.fsType, tc.ro); !slices.Equal(got, tc.want) {
			t.Errorf("%q on %s (ro %v): options %q, want %q", tc.spec, tc.fsType, tc.ro, got, tc.want)
		}
	}
}

// mountOptionsOf returns the per-mount and super-block options of the mount at mp.
func mountOptionsOf(t *testing.T, mp string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 5 && fields[4] == mp {
			return fields[5] + " " + fields[len(fields)-1]
		}
	}
	t.Fatalf("%s is not mounted", mp)
	return ""
}

// TestLayerMountOptionsFromLabel: the mount options of blob-fs-type apply to the
// layer's device; a malformed blob-fs-type fails the pull with a clear error.
func TestLayerMountOptionsFromLabel(t *testing.T) {
	needRoot(t)
	sn, _ := newTestSnapshotter(t, nil)
	ctx := context.Background()
	labels := remoteLabels("127.0.0.1:5000/library/hello:v1", "sha256:"+strings.Repeat("1", 64), "chain1")
	labels[LabelBlobFsType] = "ext4;noatime,nodelalloc"
	if _, err := sn.Prepare(ctx, "extract-1 chain1", "", snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare: %v", err)
	}
	if _, err := sn.Prepare(ctx, "c1", "chain1"); err != nil {
		t.Fatal(err)
	}
	opts := mountOptionsOf(t, sn.mountpoint(snapshotID(t, sn, "chain1")))
	for _, o := range []string{"ro", "noatime", "nodelalloc"} {
		if !strings.Contains(","+strings.ReplaceAll(opts, " ", ",")+",", ","+o+",") {
			t.Errorf("layer mounted with %q, want %s", opts, o)
		}
	}
	labels = remoteLabels("127.0.0.1:5000/library/hello:v1", "sha256:"+strings.Repeat("2", 64), "chain2")
	labels[LabelBlobFsType] = "ext4;ro,,x"
	_, err := sn.Prepare(ctx, "extract-1 chain2", "", snapshots.WithLabels(labels))
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), LabelBlobFsType) {
		t.Errorf("bad blob-fs-type: %v, want invalid argument naming the label", err)
	}
}

// TestWritableMkfsOptions: a writable layer without parent is formatted with the
// mkfs options of defaultFsType and mounted with its mount options (rwMode dir).
func TestWritableMkfsOptions(t *testing.T) {
	needRoot(t)
	sn, devs := newTestSnapshotter(t, func(c *BootConfig) {
		c.RwMode = RwDir
		c.DefaultFsType = "ext4;noatime;-b 2048 -O ^has_journal -F"
	})
	ctx := context.Background()
	m, err := sn.Prepare(ctx, "c1", "")
	if err != nil {
		t.Fatal(err)
	}
	id := snapshotID(t, sn, "c1")
	if len(m) != 1 || m[0].Source != sn.mountpoint(id) {
		t.Fatalf("mounts %+v", m)
	}
	rec, err := readDeviceRecord(sn.blockDir(id))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(rec.Block)
	if err != nil {
		t.Fatal(err)
	}
	sb := make([]byte, 1024)
	f.ReadAt(sb, 1024)
	f.Close()
	if logBlock := binary.LittleEndian.Uint32(sb[24:]); logBlock != 1 {
		t.Errorf("writable layer's ext4 has block size %d, want 2048 (the mkfs options of defaultFsType)", 1024<<logBlock)
	}
	if opts := mountOptionsOf(t, sn.mountpoint(id)); !strings.Contains(opts, "noatime") {
		t.Errorf("writable layer mounted with %q, want noatime", opts)
	}
	if err := os.WriteFile(filepath.Join(sn.mountpoint(id), "w"), []byte("x"), 0o644); err != nil {
		t.Errorf("writing into the formatted layer: %v", err)
	}
	if err := sn.Remove(ctx, "c1"); err != nil || devs.count() != 0 {
		t.Errorf("Remove: %v, %d devices left", err, devs.count())
	}
}
