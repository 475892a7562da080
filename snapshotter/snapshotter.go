package snapshotter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/google/go-containerregistry/pkg/name"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Snapshotter implements containerd's snapshots.Snapshotter on ACI's layout:
// <root>/metadata.db and <root>/snapshots/<id>/{fs,work,block}.
type Snapshotter struct {
	cfg  *BootConfig
	root string
	ms   *storage.MetaStore
	devs Devices
	// obdCmd is the argv prefix of obd's layer tools (`create`, `seal` follow).
	obdCmd []string
	// mu serialises device attach and detach.
	mu sync.Mutex
	// background: asyncRemove's removals still running (Close waits for them).
	background sync.WaitGroup
	metrics    *metrics
}

// New opens (or creates) the snapshotter's root. obdCmd runs obd's layer tools:
// obdCmd + "create" makes a writable layer, obdCmd + "seal" seals one.
func New(cfg *BootConfig, devs Devices, obdCmd []string) (*Snapshotter, error) {
	if err := os.MkdirAll(filepath.Join(cfg.Root, "snapshots"), 0o700); err != nil {
		return nil, err
	}
	if err := checkNotLocked(filepath.Join(cfg.Root, "metadata.db")); err != nil {
		return nil, err
	}
	ms, err := storage.NewMetaStore(filepath.Join(cfg.Root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(cfg.Root, "metadata.db"), err)
	}
	// The store opens the database lazily: take it (and its lock) now.
	if err := ms.WithTransaction(context.Background(), false, func(context.Context) error { return nil }); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(cfg.Root, "metadata.db"), err)
	}
	m := newMetrics()
	return &Snapshotter{cfg: cfg, root: cfg.Root, ms: ms, devs: m.devices(devs), obdCmd: obdCmd, metrics: m}, nil
}

// checkNotLocked fails when another process holds the metadata database: bolt
// would wait for it forever.
func checkNotLocked(db string) error {
	f, err := os.Open(db)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return fmt.Errorf("%s is in use (another snapshotter on this root?): %w", db, err)
	}
	return nil
}

func (s *Snapshotter) snDir(id string) string    { return filepath.Join(s.root, "snapshots", id) }
func (s *Snapshotter) fsDir(id string) string    { return filepath.Join(s.snDir(id), "fs") }
func (s *Snapshotter) workDir(id string) string  { return filepath.Join(s.snDir(id), "work") }
func (s *Snapshotter) blockDir(id string) string { return filepath.Join(s.snDir(id), "block") }
func (s *Snapshotter) mountpoint(id string) string {
	return filepath.Join(s.blockDir(id), "mountpoint")
}
func (s *Snapshotter) configPath(id string) string {
	return filepath.Join(s.blockDir(id), overlaybdConfigName)
}

// isBlock: a snapshot with a config.v1.json is served as a device.
func (s *Snapshotter) isBlock(id string) bool {
	_, err := os.Stat(s.configPath(id))
	return err == nil
}

// Stat implements snapshots.Snapshotter.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update implements snapshots.Snapshotter.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (out snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		out, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return out, err
}

// Usage implements snapshots.Snapshotter.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return usage, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.fsDir(id))
		if err != nil {
			return usage, err
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Walk implements snapshots.Snapshotter.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Close implements snapshots.Snapshotter. Devices and mounts stay: running
// containers keep their root file systems while the snapshotter restarts.
func (s *Snapshotter) Close() error {
	s.background.Wait()
	return s.ms.Close()
}

// Prepare implements snapshots.Snapshotter.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
}

// View implements snapshots.Snapshotter.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
}

// Mounts implements snapshots.Snapshotter.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		sn   storage.Snapshot
		info snapshots.Info
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		if sn, err = storage.GetSnapshot(ctx, key); err != nil {
			return err
		}
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.mounts(ctx, sn, info.Labels)
}

func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, retErr error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	targetRef := base.Labels[LabelTargetRef]
	// TurboOCI layers carry the remote labels too, but containerd unpacks their meta.
	remote := kind == snapshots.KindActive && targetRef != "" && isRemoteLayer(base.Labels) && !isTurboLayer(base.Labels)

	td, err := os.MkdirTemp(filepath.Join(s.root, "snapshots"), "new-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if td != "" {
			os.RemoveAll(td)
		}
	}()
	for _, d := range []string{"fs", "work", "block"} {
		if err := os.Mkdir(filepath.Join(td, d), 0o755); err != nil {
			return nil, err
		}
	}

	var sn storage.Snapshot
	var committed bool
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
			return err
		}
		if err := os.Rename(td, s.snDir(sn.ID)); err != nil {
			return err
		}
		td = s.snDir(sn.ID) // removed again if the transaction fails
		if !remote {
			return nil
		}
		// A remote overlaybd layer: its config is all there is to it, so it is
		// committed at once and containerd downloads nothing (ErrAlreadyExists).
		if err := s.writeRemoteConfig(sn, base.Labels); err != nil {
			return err
		}
		labels := map[string]string{}
		for k, v := range base.Labels {
			labels[k] = v
		}
		labels[LabelRemote] = remoteLabelValue
		if _, err := storage.CommitActive(ctx, key, targetRef, snapshots.Usage{}, snapshots.WithLabels(labels)); err != nil {
			return err
		}
		committed = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	td = ""
	if committed {
		zap.L().Info("remote layer prepared", zap.String("ref", targetRef), zap.String("id", sn.ID), zap.String("digest", base.Labels[LabelBlobDigest]))
		return nil, fmt.Errorf("target snapshot %q: %w", targetRef, errdefs.ErrAlreadyExists)
	}
	defer func() {
		if retErr != nil {
			s.Remove(context.WithoutCancel(ctx), key)
		}
	}()
	// A writable device goes on an overlaybd parent (or on nothing); ordinary OCI
	// images keep overlayfs in every rwMode, as in ACI.
	onDevice := len(sn.ParentIDs) == 0 || s.isBlock(sn.ParentIDs[0])
	if targetRef == "" && kind == snapshots.KindActive && onDevice {
		if mode := s.writableMode(base.Labels); mode != RwOverlayFS {
			if err := s.prepareWritable(ctx, sn, mode, base.Labels); err != nil {
				return nil, err
			}
		}
	}
	if kind == snapshots.KindActive && isRootfs(base.Labels) && !s.isBlock(sn.ID) {
		if err := s.applyRootfsQuota(sn, base.Labels); err != nil {
			return nil, err
		}
	}
	return s.mounts(ctx, sn, base.Labels)
}

func (s *Snapshotter) writableMode(labels map[string]string) string {
	switch m := labels[LabelWritable]; m {
	case RwDir, RwDev:
		return m
	}
	return s.cfg.RwMode
}

// overlaybdConfig is config.v1.json as ACI writes it.
type overlaybdConfig struct {
	RepoBlobURL string           `json:"repoBlobUrl"`
	Lowers      []overlaybdLower `json:"lowers"`
	Upper       overlaybdUpper   `json:"upper"`
	ResultFile  string           `json:"resultFile"`
}

type overlaybdLower struct {
	Digest string `json:"digest,omitempty"`
	Size   int64  `json:"size,omitempty"`
	Dir    string `json:"dir,omitempty"`
	File   string `json:"file,omitempty"`
	// TurboOCI: the original layer's digest and, for a gzip one, its gzip index.
	TargetDigest string `json:"targetDigest,omitempty"`
	GzipIndex    string `json:"gzipIndex,omitempty"`
}

type overlaybdUpper struct {
	Index string `json:"index,omitempty"`
	Data  string `json:"data,omitempty"`
	Vsize int    `json:"vsize,omitempty"` // GB, as ACI records it
}

func (s *Snapshotter) readConfig(id string) (*overlaybdConfig, error) {
	b, err := os.ReadFile(s.configPath(id))
	if err != nil {
		return nil, err
	}
	var c overlaybdConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", s.configPath(id), err)
	}
	return &c, nil
}

// parentConfig is the config of the snapshot's parent when that is a device, else empty.
func (s *Snapshotter) parentConfig(sn storage.Snapshot) (*overlaybdConfig, error) {
	if len(sn.ParentIDs) == 0 || !s.isBlock(sn.ParentIDs[0]) {
		return &overlaybdConfig{}, nil
	}
	return s.readConfig(sn.ParentIDs[0])
}

func (s *Snapshotter) writeConfig(id string, c *overlaybdConfig) error {
	c.ResultFile = filepath.Join(s.blockDir(id), resultFileName)
	return writeFileAtomic(s.configPath(id), mustJSON(c), 0o600)
}

func (s *Snapshotter) writeRemoteConfig(sn storage.Snapshot, labels map[string]string) error {
	size, err := strconv.ParseInt(labels[LabelBlobSize], 10, 64)
	if err != nil || size <= 0 {
		return fmt.Errorf("label %s=%q: want a positive size: %w", LabelBlobSize, labels[LabelBlobSize], errdefs.ErrInvalidArgument)
	}
	blobURL, err := s.repoBlobURL(imageRef(labels))
	if err != nil {
		return err
	}
	c, err := s.parentConfig(sn)
	if err != nil {
		return err
	}
	spec, _, err := s.layerFsSpec(labels, "")
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := s.writeFsSpec(sn.ID, spec); err != nil {
		return err
	}
	c.RepoBlobURL = blobURL
	c.Lowers = append(c.Lowers, overlaybdLower{Digest: labels[LabelBlobDigest], Size: size, Dir: s.fsDir(sn.ID)})
	return s.writeConfig(sn.ID, c)
}

// repoBlobURL is https://<host>/v2/<repo>/blobs; http:// for an insecure mirror
// entry and for loopback hosts (as containerd's resolver treats localhost).
func (s *Snapshotter) repoBlobURL(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	host := r.Context().RegistryStr()
	if host == name.DefaultRegistry {
		host = "registry-1.docker.io"
	}
	scheme := r.Context().Registry.Scheme()
	for _, m := range s.cfg.MirrorRegistry {
		if m.Host == host && m.Insecure {
			scheme = "http"
		}
	}
	return fmt.Sprintf("%s://%s/v2/%s/blobs", scheme, host, r.Context().RepositoryStr()), nil
}

// Commit implements snapshots.Snapshotter. A layer whose tar held overlaybd.commit
// (a stock pull of an overlaybd image) becomes a device layer.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		sn, err := storage.GetSnapshot(ctx, key)
		if err != nil {
			return err
		}
		labels, err := commitLabels(ctx, key, opts)
		if err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(s.blockDir(sn.ID), writableDataFileName)); err == nil {
			sealed, err := s.sealWritable(ctx, sn)
			if err != nil {
				return fmt.Errorf("commit %s: %w", key, err)
			}
			opts = append(opts, withLabel(LabelLocalCommitPath, sealed))
		} else if isTurboLayer(labels) {
			if err := s.writeTurboConfig(sn, labels); err != nil {
				return fmt.Errorf("commit %s: %w", key, err)
			}
		} else if isOverlaybdBlob(filepath.Join(s.fsDir(sn.ID), commitFileName)) {
			c, err := s.parentConfig(sn)
			if err != nil {
				return err
			}
			c.Lowers = append(c.Lowers, overlaybdLower{Dir: s.fsDir(sn.ID)})
			spec, _, err := s.layerFsSpec(labels, "")
			if err != nil {
				return fmt.Errorf("commit %s: %w", key, err)
			}
			if err := s.writeFsSpec(sn.ID, spec); err != nil {
				return err
			}
			if err := s.writeConfig(sn.ID, c); err != nil {
				return err
			}
		}
		du, err := fs.DiskUsage(ctx, s.fsDir(sn.ID))
		if err != nil {
			return err
		}
		_, err = storage.CommitActive(ctx, key, name, snapshots.Usage(du), opts...)
		return err
	})
}

// withLabel adds one label to those of the other options.
func withLabel(k, v string) snapshots.Opt {
	return func(info *snapshots.Info) error {
		if info.Labels == nil {
			info.Labels = map[string]string{}
		}
		info.Labels[k] = v
		return nil
	}
}

// isOverlaybdBlob: the file starts with the LSMT or the ZFile magic.
func isOverlaybdBlob(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 8)
	if _, err := f.ReadAt(b, 0); err != nil {
		return false
	}
	return bytes.Equal(b, []byte("LSMT\x00\x01\x02\x00")) || bytes.Equal(b, []byte("ZFile\x00\x01\x00"))
}

// Remove implements snapshots.Snapshotter. It detaches the snapshot's own device
// and, with autoRemoveDev, the device of the layer it was using when no other
// snapshot uses that any more.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var (
		id        string
		parentIDs []string
	)
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if sn, err := storage.GetSnapshot(ctx, key); err == nil {
			parentIDs = sn.ParentIDs
		}
		id, _, err = storage.Remove(ctx, key)
		return err
	})
	if err != nil {
		return err
	}
	if s.cfg.AsyncRemove {
		s.inBackground(key, func(ctx context.Context) error { return s.finishRemove(ctx, id, parentIDs) })
		return nil
	}
	return s.finishRemove(ctx, id, parentIDs)
}

// finishRemove releases what a removed snapshot held: its device, its directory
// and, with autoRemoveDev, the device of the layer it sat on.
func (s *Snapshotter) finishRemove(ctx context.Context, id string, parentIDs []string) error {
	var errs []error
	if err := s.releaseDevice(ctx, id); err != nil {
		// The directory stays (its mountpoint may still be mounted): Cleanup retries.
		errs = append(errs, err)
	} else if err := os.RemoveAll(s.snDir(id)); err != nil {
		errs = append(errs, err)
	}
	if s.cfg.AutoRemoveDev {
		if used := s.usedBlock(parentIDs); used != "" {
			// Checked under the device lock: a container being prepared on the layer
			// either is seen here or attaches the device again after the release.
			s.mu.Lock()
			inUse, err := s.blockInUse(ctx, used)
			if err == nil && !inUse {
				err = s.releaseDeviceLocked(ctx, used)
			}
			s.mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// usedBlock is the device layer a snapshot with these parents mounts: the nearest one.
func (s *Snapshotter) usedBlock(parentIDs []string) string {
	for _, p := range parentIDs {
		if s.isBlock(p) {
			return p
		}
	}
	return ""
}

// blockInUse: an active or view snapshot (other than an unpack) sits on the layer id.
func (s *Snapshotter) blockInUse(ctx context.Context, id string) (bool, error) {
	inUse := false
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(wctx context.Context, info snapshots.Info) error {
			if info.Kind == snapshots.KindCommitted || info.Labels[LabelTargetRef] != "" {
				return nil
			}
			sn, err := storage.GetSnapshot(ctx, info.Name)
			if err != nil {
				return nil
			}
			if s.usedBlock(sn.ParentIDs) == id {
				inUse = true
			}
			return nil
		})
	})
	return inUse, err
}

// releaseDevice unmounts and detaches the device of snapshot id, if it has one.
func (s *Snapshotter) releaseDevice(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.releaseDeviceLocked(ctx, id)
}

func (s *Snapshotter) releaseDeviceLocked(ctx context.Context, id string) error {
	rec, err := readDeviceRecord(s.blockDir(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	mp := s.mountpoint(id)
	if isMountPoint(mp) {
		if err := unix.Unmount(mp, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	if err := detachBlock(ctx, s.devs, rec); err != nil {
		return err
	}
	os.Remove(filepath.Join(s.blockDir(id), "backstore_mark"))
	zap.L().Info("device detached", zap.String("snapshot", id), zap.String("device", rec.Block))
	return os.Remove(filepath.Join(s.blockDir(id), "device.json"))
}

// ensureDevice attaches the config of snapshot id if it is not attached yet, and
// mounts its file system at block/mountpoint unless mount is false.
func (s *Snapshotter) ensureDevice(ctx context.Context, id string, readOnly, mountIt bool) (*deviceRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mp := s.mountpoint(id)
	rec, err := readDeviceRecord(s.blockDir(id))
	if err == nil && loopDead(rec) {
		if err := s.dropDeadDevice(ctx, id, rec); err != nil {
			return nil, err
		}
		rec, err = nil, os.ErrNotExist
	}
	if err == nil && (!mountIt || isMountPoint(mp)) {
		return rec, nil
	}
	if err == nil {
		// Attached but not mounted (a crash in between): start over.
		if err := detachBlock(ctx, s.devs, rec); err != nil {
			zap.L().Warn("stale device", zap.String("snapshot", id), zap.Error(err))
		}
		os.Remove(filepath.Join(s.blockDir(id), "device.json"))
	}
	rec, err = attachBlock(ctx, s.devs, s.blockDir(id), s.configPath(id), readOnly)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*deviceRecord, error) {
		detachBlock(context.WithoutCancel(ctx), s.devs, rec)
		os.Remove(filepath.Join(s.blockDir(id), "device.json"))
		return nil, err
	}
	spec, err := s.fsSpecOf(id)
	if err != nil {
		return fail(err)
	}
	if rec.FsType, err = detectFsType(rec.Block); err != nil {
		return fail(err)
	}
	if rec.FsType == "" {
		rec.FsType = spec.Type
	}
	if err := writeFileAtomic(filepath.Join(s.blockDir(id), "device.json"), mustJSON(rec), 0o600); err != nil {
		return fail(err)
	}
	if !mountIt {
		return rec, nil
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return fail(err)
	}
	if err := mountFs(rec.Block, mp, rec.FsType, spec, readOnly); err != nil {
		return fail(err)
	}
	return rec, nil
}

// prepareWritable creates the container's own writable device layer (rwMode dir/dev):
// the parent's lowers with a new upper in block/, formatted when there is no parent.
func (s *Snapshotter) prepareWritable(ctx context.Context, sn storage.Snapshot, mode string, labels map[string]string) error {
	c, err := s.parentConfig(sn)
	if err != nil {
		return err
	}
	vsize, err := s.writableVsizeGB(labels)
	if err != nil {
		return err
	}
	rawSpec, spec, err := s.layerFsSpec(labels, "")
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	mkfsOnDevice := len(c.Lowers) == 0 && spec.needsMkfsOnDevice()
	data := filepath.Join(s.blockDir(sn.ID), writableDataFileName)
	index := filepath.Join(s.blockDir(sn.ID), writableIndexFileName)
	args := []string{"create"}
	if s.cfg.WritableLayerType == "sparse" {
		args = append(args, "--sparse")
	}
	if len(c.Lowers) == 0 && !mkfsOnDevice {
		args = append(args, "--mkfs")
	}
	args = append(args, data, index, fmt.Sprintf("%dGiB", vsize))
	if err := s.runTool(ctx, args...); err != nil {
		return err
	}
	c.Upper = overlaybdUpper{Index: index, Data: data, Vsize: vsize}
	if err := s.writeFsSpec(sn.ID, rawSpec); err != nil {
		return err
	}
	if err := s.writeConfig(sn.ID, c); err != nil {
		return err
	}
	if mkfsOnDevice {
		return s.formatAndMount(ctx, sn.ID, spec, mode == RwDir)
	}
	_, err = s.ensureDevice(ctx, sn.ID, false, mode == RwDir)
	return err
}

// runTool runs one of obd's layer tools.
func (s *Snapshotter) runTool(ctx context.Context, args ...string) error {
	argv := append(append([]string{}, s.obdCmd...), args...)
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sealWritable turns a dir/dev container's writable layer into a read-only layer
// (ACI: overlaybd-commit --seal): the device goes, the sealed data becomes
// fs/overlaybd.sealed and the config stacks it on the parent's lowers.
func (s *Snapshotter) sealWritable(ctx context.Context, sn storage.Snapshot) (string, error) {
	if err := s.releaseDevice(ctx, sn.ID); err != nil {
		return "", err
	}
	data := filepath.Join(s.blockDir(sn.ID), writableDataFileName)
	index := filepath.Join(s.blockDir(sn.ID), writableIndexFileName)
	if err := s.runTool(ctx, "seal", data, index); err != nil {
		return "", err
	}
	sealed := filepath.Join(s.fsDir(sn.ID), sealedFileName)
	if err := os.Rename(data, sealed); err != nil {
		return "", err
	}
	os.Remove(index)
	c, err := s.parentConfig(sn)
	if err != nil {
		return "", err
	}
	c.Upper = overlaybdUpper{}
	c.Lowers = append(c.Lowers, overlaybdLower{Dir: s.fsDir(sn.ID)})
	return sealed, s.writeConfig(sn.ID, c)
}

// mounts returns the mounts of an active or view snapshot.
func (s *Snapshotter) mounts(ctx context.Context, sn storage.Snapshot, labels map[string]string) ([]mount.Mount, error) {
	roOpt := "rw"
	if sn.Kind == snapshots.KindView {
		roOpt = "ro"
	}
	if s.isBlock(sn.ID) && sn.Kind == snapshots.KindActive {
		// The container's own writable device (rwMode dir or dev).
		if s.writableMode(labels) == RwDev {
			rec, err := s.ensureDevice(ctx, sn.ID, false, false)
			if err != nil {
				return nil, err
			}
			return []mount.Mount{{Source: rec.Block, Type: rec.FsType, Options: []string{roOpt, "discard"}}}, nil
		}
		if _, err := s.ensureDevice(ctx, sn.ID, false, true); err != nil {
			return nil, err
		}
		return []mount.Mount{{Source: s.mountpoint(sn.ID), Type: "bind", Options: []string{roOpt, "rbind"}}}, nil
	}
	if len(sn.ParentIDs) == 0 {
		return []mount.Mount{{Source: s.fsDir(sn.ID), Type: "bind", Options: []string{roOpt, "rbind"}}}, nil
	}
	// An unpack stacks the layers' own directories; a container or a view sits on
	// the mounted device of the nearest overlaybd layer.
	unpacking := labels[LabelTargetRef] != ""
	var lowers []string
	for _, p := range sn.ParentIDs {
		if !unpacking && s.isBlock(p) {
			if _, err := s.ensureDevice(ctx, p, true, true); err != nil {
				return nil, err
			}
			lowers = append(lowers, s.mountpoint(p))
			break
		}
		lowers = append(lowers, s.fsDir(p))
	}
	if sn.Kind == snapshots.KindView {
		if len(lowers) == 1 {
			return []mount.Mount{{Source: lowers[0], Type: "bind", Options: []string{"ro", "rbind"}}}, nil
		}
		return []mount.Mount{{Source: "overlay", Type: "overlay", Options: []string{"lowerdir=" + strings.Join(lowers, ":")}}}, nil
	}
	opts := []string{}
	if overlayIndexOff() {
		opts = append(opts, "index=off")
	}
	opts = append(opts, "workdir="+s.workDir(sn.ID), "upperdir="+s.fsDir(sn.ID), "lowerdir="+strings.Join(lowers, ":"))
	return []mount.Mount{{Source: "overlay", Type: "overlay", Options: opts}}, nil
}

// overlayIndexOff: the kernel has the overlay index feature, which containerd turns off.
func overlayIndexOff() bool {
	_, err := os.Stat("/sys/module/overlay/parameters/index")
	return err == nil
}

// Cleanup implements snapshots.Cleaner: directories of snapshots the metadata no
// longer knows (a crash between the database and the file system).
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var ids map[string]string
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		ids, err = storage.IDMap(ctx)
		if errdefs.IsNotFound(err) { // a store that never held a snapshot
			ids, err = map[string]string{}, nil
		}
		return err
	}); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "snapshots"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		// new-* are snapshots being created (their transaction is not done yet).
		if _, ok := ids[e.Name()]; ok || strings.HasPrefix(e.Name(), "new-") {
			continue
		}
		if err := s.releaseDevice(ctx, e.Name()); err != nil {
			return err
		}
		if err := os.RemoveAll(filepath.Join(s.root, "snapshots", e.Name())); err != nil {
			return err
		}
	}
	return nil
}
