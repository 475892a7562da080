package snapshotter

import (
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/snapshots/storage"
	"github.com/docker/go-units"
	"golang.org/x/sys/unix"
)

// rootfsQuota (config) and the label containerd.io/snapshot/disk_quota limit what a
// container may write: in overlayfs mode a project quota on its upper and work
// directories (ACI pkg/snapshot/diskquota), in dir and dev modes the virtual size of
// its writable layer.
const LabelDiskQuota = "containerd.io/snapshot/disk_quota"

// parseQuota parses a size as ACI does (docker/go-units RAMInBytes: "20g", "512m",
// "1.5GiB", powers of 1024); "" is no quota.
func parseQuota(field, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := units.RAMInBytes(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s %q: want a positive size such as 20g, 512m or 1.5GiB (powers of 1024)", field, s)
	}
	return n, nil
}

// isRootfs: a container's snapshot, not a layer being unpacked (ACI isPrepareRootfs).
func isRootfs(labels map[string]string) bool {
	return labels[LabelTargetRef] == "" && labels["containerd.io/snapshot/type"] != "image"
}

// rootfsQuota is the quota of a container snapshot with these labels, in bytes (0: none).
func (s *Snapshotter) rootfsQuota(labels map[string]string) (int64, error) {
	if v, ok := labels[LabelDiskQuota]; ok {
		n, err := parseQuota("label "+LabelDiskQuota, v)
		if err != nil {
			return 0, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		return n, nil
	}
	return parseQuota("rootfsQuota", s.cfg.RootfsQuota)
}

// writableVsizeGB is the virtual size of a container's writable layer: the vsize
// label, else the quota rounded up to whole GiB, else 64 GiB.
func (s *Snapshotter) writableVsizeGB(labels map[string]string) (int, error) {
	if v := labels[LabelVsize]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("label %s=%q: want a size in GB: %w", LabelVsize, v, errdefs.ErrInvalidArgument)
		}
		return n, nil
	}
	q, err := s.rootfsQuota(labels)
	if err != nil || q == 0 {
		return defaultVsizeGB, err
	}
	return int((q + 1<<30 - 1) >> 30), nil
}

// Project quota ids: above ACI's QuotaMinID (2^24), one per snapshot id, so that
// ids of other users of the file system (small numbers) are left alone.
const quotaMinID = 1 << 24

// fsxattr is struct fsxattr of linux/fs.h (FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR).
type fsxattr struct {
	XFlags     uint32
	ExtSize    uint32
	NExtents   uint32
	ProjID     uint32
	CowExtSize uint32
	Pad        [8]byte
}

// ifDqblk is struct if_dqblk of linux/quota.h (Q_SETQUOTA).
type ifDqblk struct {
	BHardLimit uint64 // in 1 KiB blocks
	BSoftLimit uint64
	CurSpace   uint64
	IHardLimit uint64
	ISoftLimit uint64
	CurInodes  uint64
	BTime      uint64
	ITime      uint64
	Valid      uint32
	_          uint32
}

const (
	fsIocFsGetXattr    = 0x801c581f // _IOR('X', 31, struct fsxattr)
	fsIocFsSetXattr    = 0x401c5820 // _IOW('X', 32, struct fsxattr)
	fsXflagProjInherit = 0x200
	qSetQuota          = 0x800008
	prjQuota           = 2
	qifBLimits         = 1
)

// setProjectQuota puts dirs (on one file system) under project quota id with a
// hard block limit of limit bytes. The file system must be mounted with prjquota.
func setProjectQuota(dirs []string, id uint32, limit int64) error {
	info, err := mount.Lookup(dirs[0])
	if err != nil {
		return fmt.Errorf("rootfsQuota: finding the mount of %s: %w", dirs[0], err)
	}
	if !strings.Contains(","+info.VFSOptions+",", ",prjquota,") {
		return fmt.Errorf("rootfsQuota: %s (%s, mounted at %s) is not mounted with prjquota: the quota cannot be enforced (mount it with -o prjquota, or drop rootfsQuota): %w",
			info.Source, info.FSType, info.Mountpoint, errdefs.ErrFailedPrecondition)
	}
	for _, d := range dirs {
		if err := setProjectID(d, id); err != nil {
			return err
		}
	}
	dq := ifDqblk{BHardLimit: uint64(limit+1023) / 1024, Valid: qifBLimits}
	dev, err := unix.BytePtrFromString(info.Source)
	if err != nil {
		return err
	}
	if _, _, e := unix.Syscall6(unix.SYS_QUOTACTL, uintptr(qSetQuota<<8|prjQuota), uintptr(unsafe.Pointer(dev)),
		uintptr(id), uintptr(unsafe.Pointer(&dq)), 0, 0); e != 0 {
		return fmt.Errorf("rootfsQuota: quotactl(Q_SETQUOTA, project %d, %s): %w", id, info.Source, e)
	}
	return nil
}

// setProjectID gives dir project id (inherited by what is created under it).
func setProjectID(dir string, id uint32) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var a fsxattr
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFsGetXattr, uintptr(unsafe.Pointer(&a))); e != 0 {
		return fmt.Errorf("rootfsQuota: %s: FS_IOC_FSGETXATTR: %w", dir, e)
	}
	a.ProjID = id
	a.XFlags |= fsXflagProjInherit
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFsSetXattr, uintptr(unsafe.Pointer(&a))); e != 0 {
		return fmt.Errorf("rootfsQuota: %s: FS_IOC_FSSETXATTR (project %d): %w", dir, id, e)
	}
	return nil
}

// quotaID is the project id of snapshot id (its number above quotaMinID).
func quotaID(snID string) (uint32, error) {
	n, err := strconv.ParseUint(snID, 10, 32)
	if err != nil || n > 1<<32-1-quotaMinID {
		return 0, fmt.Errorf("rootfsQuota: snapshot id %q has no project id", snID)
	}
	return uint32(n + quotaMinID), nil
}

// applyRootfsQuota puts an overlayfs container's upper (and work) directory under
// its quota, if it has one.
func (s *Snapshotter) applyRootfsQuota(sn storage.Snapshot, labels map[string]string) error {
	q, err := s.rootfsQuota(labels)
	if err != nil || q == 0 {
		return err
	}
	id, err := quotaID(sn.ID)
	if err != nil {
		return err
	}
	dirs := []string{s.fsDir(sn.ID)}
	if len(sn.ParentIDs) > 0 {
		dirs = append(dirs, s.workDir(sn.ID))
	}
	return setProjectQuota(dirs, id, q)
}
