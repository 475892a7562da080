package snapshotter

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/storage"
	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// TurboOCI layers (docs/overlaybd-format.md §12): the layer blob is an ordinary gzip
// tar holding <fs>.fs.meta (the file system's metadata, its file data mapped onto the
// original OCI layer), gzip.meta (the gzip index of a gzip original) and .turbo.ociv1.
// containerd unpacks it into fs/ like any layer; Commit then writes the config that
// serves the original layer (fetched by targetDigest from repoBlobUrl) through it.
const (
	LabelTurboOCIDigest    = "containerd.io/snapshot/overlaybd/turbo-oci/target-digest"
	LabelTurboOCIMediaType = "containerd.io/snapshot/overlaybd/turbo-oci/target-media-type"
	// Legacy names of the same labels (images converted as "fastoci").
	LabelFastOCIDigest    = "containerd.io/snapshot/overlaybd/fastoci/target-digest"
	LabelFastOCIMediaType = "containerd.io/snapshot/overlaybd/fastoci/target-media-type"

	gzipIndexFileName = "gzip.meta"
	fsMetaSuffix      = ".fs.meta"
	// turboExt4Fallback in the root forces ext4 metas (ACI's escape hatch).
	turboExt4Fallback = ".TurboOCI_ext4"
)

// turboTarget returns the original layer's digest and media type of a TurboOCI layer.
func turboTarget(labels map[string]string) (dgst, mediaType string, ok bool) {
	if d, ok := labels[LabelTurboOCIDigest]; ok {
		return d, labels[LabelTurboOCIMediaType], true
	}
	if d, ok := labels[LabelFastOCIDigest]; ok {
		return d, labels[LabelFastOCIMediaType], true
	}
	return "", "", false
}

func isTurboLayer(labels map[string]string) bool {
	_, _, ok := turboTarget(labels)
	return ok
}

// isGzipMediaType: the OCI and the docker gzip layer types (ACI isGzipLayerType).
func isGzipMediaType(mt string) bool {
	return mt == "application/vnd.oci.image.layer.v1.tar+gzip" || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip"
}

// turboFsMeta picks the layer's fs meta by the turboFsType preference; erofs only
// where the kernel has it. Nothing found: ext4, as ACI.
func (s *Snapshotter) turboFsMeta(id string) (path, fsType string) {
	for _, t := range s.cfg.TurboFsType {
		p := filepath.Join(s.fsDir(id), t+fsMetaSuffix)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if t == "erofs" && !kernelHasErofs() {
			zap.L().Warn("erofs fs meta skipped: the kernel has no erofs", zap.String("snapshot", id))
			continue
		}
		return p, t
	}
	return filepath.Join(s.fsDir(id), "ext4"+fsMetaSuffix), "ext4"
}

var (
	erofsOnce sync.Once
	erofsOK   bool
)

// kernelHasErofs: /proc/filesystems lists erofs, after a modprobe if needed.
func kernelHasErofs() bool {
	erofsOnce.Do(func() {
		has := func() bool {
			b, err := os.ReadFile("/proc/filesystems")
			return err == nil && bytes.Contains(b, []byte("\terofs\n"))
		}
		if !has() {
			exec.Command("modprobe", "erofs").Run()
		}
		erofsOK = has()
	})
	return erofsOK
}

// writeTurboConfig writes the config of a committed TurboOCI layer: the parent's
// lowers plus {dir, file: <fs>.fs.meta, targetDigest, gzipIndex}. A layer above
// another TurboOCI layer uses the bottom layer's file system.
func (s *Snapshotter) writeTurboConfig(sn storage.Snapshot, labels map[string]string) error {
	dgst, mediaType, _ := turboTarget(labels)
	if _, err := digest.Parse(dgst); err != nil {
		return fmt.Errorf("TurboOCI layer: label %s=%q: %v: %w", LabelTurboOCIDigest, dgst, err, errdefs.ErrInvalidArgument)
	}
	ref := imageRef(labels)
	if ref == "" {
		return fmt.Errorf("TurboOCI layer %s: no label %s or %s: the original layer cannot be fetched without the image reference: %w",
			dgst, LabelImageRef, LabelCRIImageRef, errdefs.ErrInvalidArgument)
	}
	blobURL, err := s.repoBlobURL(ref)
	if err != nil {
		return err
	}
	c, err := s.parentConfig(sn)
	if err != nil {
		return err
	}
	var fsMeta, fsType string
	if len(c.Lowers) > 0 && c.Lowers[0].File != "" {
		name := filepath.Base(c.Lowers[0].File)
		fsMeta, fsType = filepath.Join(s.fsDir(sn.ID), name), strings.TrimSuffix(name, fsMetaSuffix)
	} else {
		fsMeta, fsType = s.turboFsMeta(sn.ID)
	}
	if _, err := os.Stat(filepath.Join(s.root, turboExt4Fallback)); err == nil {
		zap.L().Info("TurboOCI layers forced to ext4", zap.String("marker", filepath.Join(s.root, turboExt4Fallback)))
		for i := range c.Lowers {
			if c.Lowers[i].File != "" {
				c.Lowers[i].File = filepath.Join(filepath.Dir(c.Lowers[i].File), "ext4"+fsMetaSuffix)
			}
		}
		fsMeta, fsType = filepath.Join(s.fsDir(sn.ID), "ext4"+fsMetaSuffix), "ext4"
	}
	if _, err := os.Stat(fsMeta); err != nil {
		return fmt.Errorf("TurboOCI layer %s: the unpacked layer has no %s: %w", dgst, filepath.Base(fsMeta), err)
	}
	lower := overlaybdLower{Dir: s.fsDir(sn.ID), File: fsMeta, TargetDigest: dgst}
	if isGzipMediaType(mediaType) {
		lower.GzipIndex = filepath.Join(s.fsDir(sn.ID), gzipIndexFileName)
		if _, err := os.Stat(lower.GzipIndex); err != nil {
			return fmt.Errorf("TurboOCI layer %s: gzip target (%s) but the unpacked layer has no %s: %w", dgst, mediaType, gzipIndexFileName, err)
		}
	}
	spec, _, err := s.layerFsSpec(labels, fsType)
	if err != nil {
		return err
	}
	c.RepoBlobURL = blobURL
	c.Lowers = append(c.Lowers, lower)
	if err := s.writeFsSpec(sn.ID, spec); err != nil {
		return err
	}
	zap.L().Info("TurboOCI layer committed", zap.String("id", sn.ID), zap.String("target", dgst), zap.String("fsType", fsType))
	return s.writeConfig(sn.ID, c)
}

// commitLabels are the labels a snapshot is committed with: those it was prepared
// with, overridden by the commit's options.
func commitLabels(ctx context.Context, key string, opts []snapshots.Opt) (map[string]string, error) {
	_, info, _, err := storage.GetInfo(ctx, key)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{}
	for k, v := range info.Labels {
		labels[k] = v
	}
	for _, o := range opts {
		var i snapshots.Info
		if err := o(&i); err != nil {
			return nil, err
		}
		for k, v := range i.Labels {
			labels[k] = v
		}
	}
	return labels, nil
}
