package snapshotter

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// A FUSE image file dies with the obd daemon that serves it; a restarted daemon
// serves it again at the same path and moves the loop devices over the dead file
// onto the new one (LOOP_CHANGE_FD, read-only loop devices only). Since Linux 6.5
// that move marks the loop device dead to its holder: a file system mounted
// right on it shuts down. So a read-only image layer is mounted through a second
// read-only loop device over the first (its backing file is /dev/loopN, which it
// does not claim): the daemon moves the inner one and the mounted outer one never
// notices. See docs/containerd.md, "Restarts".

// losetup sets up a loop device over path and returns it.
func losetup(ctx context.Context, path string, readOnly bool) (string, error) {
	args := []string{"--find", "--show", "--direct-io=on"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.CommandContext(ctx, "losetup", append(args, path)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// loopDetach releases a loop device this snapshotter set up.
func loopDetach(ctx context.Context, dev string) error {
	if out, err := exec.CommandContext(ctx, "losetup", "-d", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -d %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// loopOverFile returns the block device to mount for a FUSE image file: for a
// read-only one the outer of two stacked loop devices (inner is the one over the
// file, which a restarted daemon moves), else one loop device.
func loopOverFile(ctx context.Context, path string, readOnly bool) (block, inner string, err error) {
	dev, err := losetup(ctx, path, readOnly)
	if err != nil || !readOnly {
		return dev, "", err
	}
	outer, err := losetup(ctx, dev, true)
	if err != nil {
		if derr := loopDetach(context.WithoutCancel(ctx), dev); derr != nil {
			zap.L().Warn("loop device left behind", zap.String("device", dev), zap.String("file", path), zap.Error(derr))
		}
		return "", "", err
	}
	return outer, dev, nil
}

// loopDead reports whether the loop device under rec no longer reads rec.Path,
// the FUSE image file: the obd daemon serving it died and a restarted one took
// the mount over without being able to move this loop device (a writable one,
// or a restore that failed). The kernel then names the backing file relative to
// the detached dead mount ("/image"), or the loop device is unbound. While the
// daemon is down the dead mount is still in place and nothing is reported: no
// new device could be had anyway.
func loopDead(rec *deviceRecord) bool {
	if !rec.Loop {
		return false
	}
	backing, err := loopBacking(rec.fileLoop())
	if err != nil {
		return true
	}
	if backing == rec.Path {
		return false
	}
	// The kernel names the file with symlinks resolved: resolve the mount
	// directory's parent (the mount itself may be dead).
	mountDir := filepath.Dir(rec.Path)
	parent, err := filepath.EvalSymlinks(filepath.Dir(mountDir))
	return err != nil || backing != filepath.Join(parent, filepath.Base(mountDir), filepath.Base(rec.Path))
}

// dropDeadDevice undoes a device whose loop device died with the obd daemon
// (loopDead), so that it is attached anew: its mount goes (refused while a
// container still uses it: that container's I/O fails until it is stopped), the
// loop devices, and the daemon's device, which a restarted daemon serves again.
func (s *Snapshotter) dropDeadDevice(ctx context.Context, id string, rec *deviceRecord) error {
	zap.L().Warn("device died with the obd daemon: attaching it again", zap.String("snapshot", id), zap.String("device", rec.Block), zap.String("file", rec.Path))
	mp := s.mountpoint(id)
	if isMountPoint(mp) {
		if err := unix.Unmount(mp, 0); err != nil {
			return fmt.Errorf("snapshot %s: its device %s died with the obd daemon and is still in use at %s (stop the containers on it): %w", id, rec.Block, mp, err)
		}
	}
	// Its loop devices no longer read rec.Path, so detachBlock would leave them
	// alone as reused: release them here.
	for _, dev := range []string{rec.Block, rec.Inner} {
		if dev != "" {
			if err := loopDetach(ctx, dev); err != nil {
				zap.L().Warn("dead loop device", zap.String("snapshot", id), zap.String("device", dev), zap.Error(err))
			}
		}
	}
	if err := detachBlock(ctx, s.devs, rec); err != nil {
		zap.L().Warn("dead device", zap.String("snapshot", id), zap.Error(err))
	}
	return os.Remove(filepath.Join(s.blockDir(id), "device.json"))
}
