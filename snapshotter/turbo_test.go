package snapshotter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"

	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
)

// Reference TurboOCI data (testdata/golden/reference/README.md, d_ext4): layer0.tar.gz
// converted by turboOCI-apply into an ext4 meta (t0.fsmeta) and an erofs meta
// (e0.fsmeta), with the gzip index t0.gzip.meta; layer0.tar is the same layer
// uncompressed, the byte stream both metas map file data onto.
const (
	turboDir       = "../testdata/golden/reference/d_ext4"
	turboTargetDgs = "sha256:a318e29512c63829cc8e5307ecde2715da8b0e87c8779f9deb5c51457bd0e731" // layer0.tar.gz
	turboGzipType  = "application/vnd.oci.image.layer.v1.tar+gzip"
)

func turboLabels(chainID string) map[string]string {
	return map[string]string{
		LabelTargetRef:         chainID,
		LabelCRIImageRef:       "127.0.0.1:5000/library/turbo:v1",
		LabelBlobDigest:        "sha256:" + strings.Repeat("7", 64), // the meta tarball
		LabelBlobSize:          "12345",
		LabelVersion:           "0.1.0-turbo.ociv1",
		LabelTurboOCIDigest:    turboTargetDgs,
		LabelTurboOCIMediaType: turboGzipType,
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// unpackTurbo runs containerd's unpack of a TurboOCI layer: Prepare must give a
// mount to unpack into (not ErrAlreadyExists: the meta tarball is downloaded), the
// tarball's files land there, and Commit builds the layer's config.
func unpackTurbo(t *testing.T, sn *Snapshotter, parent, chainID string, metas map[string]string) error {
	t.Helper()
	ctx := context.Background()
	key := "extract-1 " + chainID
	m, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(turboLabels(chainID)))
	if err != nil {
		t.Fatalf("Prepare of a TurboOCI layer: %v, want a mount to unpack into", err)
	}
	dir := m[0].Source
	if parent != "" { // the unpack's upper
		dir = strings.TrimPrefix(hasOption(m[0], "upperdir="), "upperdir=")
	}
	for name, src := range metas {
		copyFile(t, filepath.Join(turboDir, src), filepath.Join(dir, name))
	}
	os.WriteFile(filepath.Join(dir, ".turbo.ociv1"), nil, 0o644)
	return sn.Commit(ctx, chainID, key, snapshots.WithLabels(turboLabels(chainID)))
}

// serveTurbo builds the virtual disk a config.v1.json of one TurboOCI lower
// describes, from the files it names: the fs meta (a ZFile-compressed warp layer)
// over the layer's uncompressed tar. A device would read the gzip target through
// gzipIndex; the uncompressed stream is what that yields.
func serveTurbo(t *testing.T, dir string) func(string) (string, error) {
	return func(configPath string) (string, error) {
		var c overlaybdConfig
		b, err := os.ReadFile(configPath)
		if err != nil {
			return "", err
		}
		if err := json.Unmarshal(b, &c); err != nil {
			return "", err
		}
		if len(c.Lowers) != 1 || c.Lowers[0].TargetDigest != turboTargetDgs {
			return "", fmt.Errorf("config %s: lowers %+v, want one TurboOCI lower of %s", configPath, c.Lowers, turboTargetDgs)
		}
		meta, err := os.Open(c.Lowers[0].File)
		if err != nil {
			return "", err
		}
		defer meta.Close()
		st, _ := meta.Stat()
		inner, isize, _, err := layer.Unwrap(meta, st.Size(), c.Lowers[0].File)
		if err != nil {
			return "", err
		}
		target, err := os.Open(filepath.Join(turboDir, "layer0.tar"))
		if err != nil {
			return "", err
		}
		defer target.Close()
		l, err := lsmt.OpenWarpLayer(inner, isize, target)
		if err != nil {
			return "", err
		}
		img := filepath.Join(dir, "turbo-"+filepath.Base(c.Lowers[0].File)+".img")
		out, err := os.Create(img)
		if err != nil {
			return "", err
		}
		defer out.Close()
		for _, s := range l.Segments() {
			if s.Zeroed {
				continue
			}
			off, n := int64(s.Offset)*lsmt.SectorSize, int64(s.Length)*lsmt.SectorSize
			if _, err := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(l.ReaderAt(), off, n)); err != nil {
				return "", err
			}
		}
		return img, out.Truncate(int64(l.VirtualSize()))
	}
}

func fileSHA16(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])[:16]
}

// TestTurboOCILayer: a TurboOCI layer is unpacked (not served lazily at Prepare), its
// config at Commit is ACI's {dir, file: <fs>.fs.meta, targetDigest, gzipIndex} with
// the meta chosen by turboFsType, and a container on it gets the device of that
// config mounted with the meta's file system, showing the layer's files.
func TestTurboOCILayer(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name       string
		turboTypes []string
		fsType     string
	}{
		{"ext4", []string{"ext4", "erofs"}, "ext4"},
		{"erofs", []string{"erofs", "ext4"}, "erofs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fsType == "erofs" && !kernelHasErofs() {
				t.Skip("the kernel has no erofs")
			}
			sn, devs := newTestSnapshotter(t, func(c *BootConfig) { c.TurboFsType = tc.turboTypes })
			devs.serve = serveTurbo(t, devs.dir)
			ctx := context.Background()
			metas := map[string]string{"ext4.fs.meta": "t0.fsmeta", "erofs.fs.meta": "e0.fsmeta", "gzip.meta": "t0.gzip.meta"}
			if err := unpackTurbo(t, sn, "", "chain1", metas); err != nil {
				t.Fatal(err)
			}
			id := snapshotID(t, sn, "chain1")
			c, err := sn.readConfig(id)
			if err != nil {
				t.Fatal(err)
			}
			want := overlaybdLower{Dir: sn.fsDir(id), File: filepath.Join(sn.fsDir(id), tc.fsType+".fs.meta"),
				TargetDigest: turboTargetDgs, GzipIndex: filepath.Join(sn.fsDir(id), "gzip.meta")}
			if c.RepoBlobURL != "http://127.0.0.1:5000/v2/library/turbo/blobs" || len(c.Lowers) != 1 || c.Lowers[0] != want {
				t.Fatalf("config %+v: want repoBlobUrl of the image and lowers [%+v]", c, want)
			}
			m, err := sn.Prepare(ctx, "c1", "chain1")
			if err != nil {
				t.Fatal(err)
			}
			mp := sn.mountpoint(id)
			if len(m) != 1 || m[0].Type != "overlay" || hasOption(m[0], "lowerdir=") != "lowerdir="+mp {
				t.Fatalf("container mounts %+v: want overlay on %s", m, mp)
			}
			rec, err := readDeviceRecord(sn.blockDir(id))
			if err != nil || rec.FsType != tc.fsType {
				t.Fatalf("device %+v %v: want file system %s", rec, err, tc.fsType)
			}
			for p, sum := range map[string]string{"etc/hostname": "5ac03da17d7d5241", "etc/big.bin": "bdbaae95ac7ffa5d", "usr/bin/tool": "ceff8d8909b1bbcf"} {
				if got := fileSHA16(t, filepath.Join(mp, p)); got != sum {
					t.Errorf("%s in the TurboOCI layer: sha256 %s..., want %s...", p, got, sum)
				}
			}
			if err := sn.Remove(ctx, "c1"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestTurboOCIConfigChoices: without erofs in turboFsType the ext4 meta serves; the
// root's .TurboOCI_ext4 forces ext4; a layer on a TurboOCI layer follows the bottom
// layer's file system; a non-gzip target has no gzipIndex; a layer whose meta is
// missing, or that has no image reference, fails its Commit with a clear error.
func TestTurboOCIConfigChoices(t *testing.T) {
	metas := map[string]string{"ext4.fs.meta": "t0.fsmeta", "erofs.fs.meta": "e0.fsmeta", "gzip.meta": "t0.gzip.meta"}
	t.Run("fallback marker", func(t *testing.T) {
		sn, _ := newTestSnapshotter(t, func(c *BootConfig) { c.TurboFsType = []string{"erofs", "ext4"} })
		os.WriteFile(filepath.Join(sn.root, ".TurboOCI_ext4"), nil, 0o644)
		if err := unpackTurbo(t, sn, "", "chain1", metas); err != nil {
			t.Fatal(err)
		}
		c, _ := sn.readConfig(snapshotID(t, sn, "chain1"))
		if filepath.Base(c.Lowers[0].File) != "ext4.fs.meta" {
			t.Errorf("lower file %s with .TurboOCI_ext4, want ext4.fs.meta", c.Lowers[0].File)
		}
		spec, err := sn.fsSpecOf(snapshotID(t, sn, "chain1"))
		if err != nil || spec.Type != "ext4" {
			t.Errorf("fs spec %+v %v, want ext4", spec, err)
		}
	})
	t.Run("upper layer follows the bottom", func(t *testing.T) {
		sn, _ := newTestSnapshotter(t, func(c *BootConfig) { c.TurboFsType = []string{"ext4", "erofs"} })
		if err := unpackTurbo(t, sn, "", "chain1", map[string]string{"ext4.fs.meta": "t0.fsmeta", "gzip.meta": "t0.gzip.meta"}); err != nil {
			t.Fatal(err)
		}
		sn.cfg.TurboFsType = []string{"erofs", "ext4"}
		if err := unpackTurbo(t, sn, "chain1", "chain2", metas); err != nil {
			t.Fatal(err)
		}
		id := snapshotID(t, sn, "chain2")
		c, _ := sn.readConfig(id)
		if len(c.Lowers) != 2 || c.Lowers[1].File != filepath.Join(sn.fsDir(id), "ext4.fs.meta") || c.Lowers[0].Dir != sn.fsDir(snapshotID(t, sn, "chain1")) {
			t.Errorf("lowers %+v: want the bottom layer, then this one's ext4 meta", c.Lowers)
		}
	})
	t.Run("uncompressed target", func(t *testing.T) {
		sn, _ := newTestSnapshotter(t, nil)
		ctx := context.Background()
		labels := turboLabels("chain1")
		delete(labels, LabelTurboOCIDigest)
		delete(labels, LabelTurboOCIMediaType)
		labels[LabelFastOCIDigest] = turboTargetDgs // the legacy label names
		labels[LabelFastOCIMediaType] = "application/vnd.oci.image.layer.v1.tar"
		m, err := sn.Prepare(ctx, "extract-1 chain1", "", snapshots.WithLabels(labels))
		if err != nil {
			t.Fatal(err)
		}
		copyFile(t, filepath.Join(turboDir, "t0.fsmeta"), filepath.Join(m[0].Source, "ext4.fs.meta"))
		if err := sn.Commit(ctx, "chain1", "extract-1 chain1"); err != nil {
			t.Fatal(err)
		}
		c, _ := sn.readConfig(snapshotID(t, sn, "chain1"))
		if len(c.Lowers) != 1 || c.Lowers[0].GzipIndex != "" || c.Lowers[0].TargetDigest != turboTargetDgs {
			t.Errorf("lowers %+v: want the target digest and no gzip index", c.Lowers)
		}
	})
	t.Run("missing meta", func(t *testing.T) {
		sn, _ := newTestSnapshotter(t, func(c *BootConfig) { c.TurboFsType = []string{"erofs"} })
		err := unpackTurbo(t, sn, "", "chain1", map[string]string{"gzip.meta": "t0.gzip.meta"})
		if err == nil || !strings.Contains(err.Error(), "ext4.fs.meta") || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Commit of a TurboOCI layer without meta: %v, want an error naming ext4.fs.meta", err)
		}
	})
	t.Run("missing gzip index", func(t *testing.T) {
		sn, _ := newTestSnapshotter(t, nil)
		err := unpackTurbo(t, sn, "", "chain1", map[string]string{"ext4.fs.meta": "t0.fsmeta"})
		if err == nil || !strings.Contains(err.Error(), "gzip.meta") {
			t.Errorf("Commit of a gzip TurboOCI layer without gzip.meta: %v, want an error naming gzip.meta", err)
		}
	})
	t.Run("bad target digest", func(t *testing.T) {
		sn, _ := newTestSnapshotter(t, nil)
		ctx := context.Background()
		labels := turboLabels("chain1")
		labels[LabelTurboOCIDigest] = "sha256:nothex"
		if _, err := sn.Prepare(ctx, "extract-1 chain1", "", snapshots.WithLabels(labels)); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, "chain1", "extract-1 chain1"); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), LabelTurboOCIDigest) {
			t.Errorf("bad target digest: %v, want invalid argument naming the label", err)
		}
	})
}
