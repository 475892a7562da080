package snapshotter

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
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
		loopDetach(context.WithoutCancel(ctx), dev)
		return "", "", err
	}
	return outer, dev, nil
}
