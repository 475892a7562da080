package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/containerd/mount"
	"go.uber.org/zap"
)

// fsSpec is ACI's file-system string "fstype[;mountopts[;mkfsopts]]" (defaultFsType,
// the label containerd.io/snapshot/overlaybd/blob-fs-type; ACI docs/MULTI_FS_SUPPORT.md):
// mount options are comma-separated, mkfs options space-separated. A part that is
// absent means the type's defaults (fsDefaults); a present but empty part means none.
type fsSpec struct {
	Type      string
	MountOpts []string
	MkfsOpts  []string
	mountSet  bool
	mkfsSet   bool
}

// fsTypeName is what a kernel file-system name looks like (ext4, xfs, erofs, f2fs, fuse.x).
// Compiled on first use, not at init: every obd command links this package.
var fsTypeName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`) })

// parseFsSpec parses s; field names where it came from for the error.
func parseFsSpec(field, s string) (fsSpec, error) {
	parts := strings.Split(s, ";")
	if len(parts) > 3 {
		return fsSpec{}, fmt.Errorf("%s %q: want fstype[;mountopts[;mkfsopts]], got %d ';'-separated parts", field, s, len(parts))
	}
	spec := fsSpec{Type: strings.TrimSpace(parts[0])}
	if !fsTypeName().MatchString(spec.Type) {
		return fsSpec{}, fmt.Errorf("%s %q: file-system type %q is not a file-system name (e.g. ext4, erofs, xfs)", field, s, spec.Type)
	}
	if len(parts) > 1 {
		spec.mountSet = true
		if o := strings.TrimSpace(parts[1]); o != "" {
			for _, opt := range strings.Split(o, ",") {
				opt = strings.TrimSpace(opt)
				if opt == "" || strings.ContainsAny(opt, " \t") {
					return fsSpec{}, fmt.Errorf("%s %q: mount options %q: empty option or blank inside one", field, s, parts[1])
				}
				spec.MountOpts = append(spec.MountOpts, opt)
			}
		}
	}
	if len(parts) > 2 {
		spec.mkfsSet = true
		spec.MkfsOpts = strings.Fields(parts[2])
	}
	return spec, nil
}

// fsDefaults are ACI's mount and mkfs defaults per type (pkg/snapshot/storage.go).
var fsDefaults = map[string]struct{ mount, mkfs []string }{
	"ext4": {[]string{"discard"}, []string{"-O", "^has_journal,sparse_super,flex_bg", "-G", "1", "-E", "discard", "-F"}},
	"xfs":  {[]string{"nouuid", "discard"}, []string{"-f", "-l", "size=4m", "-m", "crc=0"}},
	"f2fs": {nil, []string{"-S", "-w", "4096"}},
	"ntfs": {nil, []string{"-F", "-f"}},
}

// mountOptions are the options a device with file system fsType is mounted with:
// the spec's (when it names the same type, or none was detected) or the type's
// defaults, plus ro for read-only mounts. discard is left out of read-only mounts.
func (spec fsSpec) mountOptions(fsType string, readOnly bool) []string {
	var opts []string
	if spec.mountSet && spec.Type == fsType {
		opts = slices.Clone(spec.MountOpts)
	} else if !readOnly {
		opts = slices.Clone(fsDefaults[fsType].mount)
	}
	if readOnly {
		opts = slices.DeleteFunc(opts, func(o string) bool { return o == "rw" || o == "discard" })
		if !slices.Contains(opts, "ro") {
			opts = append([]string{"ro"}, opts...)
		}
	}
	return opts
}

// mkfsArgs is the mkfs command line that formats dev with the spec's file system.
func (spec fsSpec) mkfsArgs(dev string) []string {
	args := []string{"mkfs", "-t", spec.Type}
	if spec.mkfsSet {
		args = append(args, spec.MkfsOpts...)
	} else {
		args = append(args, fsDefaults[spec.Type].mkfs...)
	}
	return append(args, dev)
}

// needsMkfsOnDevice: obd create --mkfs formats only ext4 with ACI's default options;
// any other type or explicit mkfs options are formatted on the attached device, as
// ACI does.
func (spec fsSpec) needsMkfsOnDevice() bool {
	return spec.Type != "ext4" || spec.mkfsSet
}

// fsSpecFileName holds, in block/, the fsSpec string chosen for the snapshot's device
// when its config was written (the labels are not at hand when a device is attached).
const fsSpecFileName = "fstype"

func (s *Snapshotter) writeFsSpec(id, spec string) error {
	return writeFileAtomic(filepath.Join(s.blockDir(id), fsSpecFileName), []byte(spec), 0o644)
}

// fsSpecOf is the file-system spec of snapshot id's device: the one recorded with its
// config, else defaultFsType (validated at load).
func (s *Snapshotter) fsSpecOf(id string) (fsSpec, error) {
	p := filepath.Join(s.blockDir(id), fsSpecFileName)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return parseFsSpec("defaultFsType", s.cfg.DefaultFsType)
	}
	if err != nil {
		return fsSpec{}, err
	}
	return parseFsSpec(p, strings.TrimSpace(string(b)))
}

// layerFsSpec chooses the spec of a layer with these labels: blob-fs-type, else the
// file system of a TurboOCI layer's meta, else defaultFsType. It returns the string
// (what writeFsSpec records) and its parse.
func (s *Snapshotter) layerFsSpec(labels map[string]string, turboFsType string) (string, fsSpec, error) {
	raw := labels[LabelBlobFsType]
	switch {
	case raw != "":
	case turboFsType != "":
		raw = turboFsType
	default:
		raw = s.cfg.DefaultFsType
	}
	spec, err := parseFsSpec("label "+LabelBlobFsType, raw)
	if err != nil {
		return "", fsSpec{}, err
	}
	return raw, spec, nil
}

// mountFs mounts dev (file system fsType) at mp with the spec's options, through
// containerd's mount package (it turns ro, noatime, ... into mount flags).
func mountFs(dev, mp, fsType string, spec fsSpec, readOnly bool) error {
	m := mount.Mount{Source: dev, Type: fsType, Options: spec.mountOptions(fsType, readOnly)}
	if err := m.Mount(mp); err != nil {
		return fmt.Errorf("mount %s (%s, options %q) at %s: %w", dev, fsType, strings.Join(m.Options, ","), mp, err)
	}
	return nil
}

// mkfsDevice formats a fresh writable device as ACI does for a snapshot without parent.
func mkfsDevice(ctx context.Context, spec fsSpec, dev string) error {
	argv := spec.mkfsArgs(dev)
	zap.L().Info("formatting writable device", zap.Strings("argv", argv))
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// formatAndMount attaches a fresh writable layer, formats it with the spec's mkfs
// and, if mountIt, mounts it at block/mountpoint.
func (s *Snapshotter) formatAndMount(ctx context.Context, id string, spec fsSpec, mountIt bool) error {
	rec, err := s.ensureDevice(ctx, id, false, false)
	if err != nil {
		return err
	}
	if err := mkfsDevice(ctx, spec, rec.Block); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec.FsType, err = detectFsType(rec.Block); err != nil {
		return err
	}
	if rec.FsType == "" {
		rec.FsType = spec.Type
	}
	if err := writeFileAtomic(filepath.Join(s.blockDir(id), "device.json"), mustJSON(rec), 0o600); err != nil {
		return err
	}
	if !mountIt {
		return nil
	}
	mp := s.mountpoint(id)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return err
	}
	return mountFs(rec.Block, mp, rec.FsType, spec, false)
}
