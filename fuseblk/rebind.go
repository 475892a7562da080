package fuseblk

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// TakeOverStale is CleanupStale for a server that serves the same files at dir
// again (a restarted daemon recovering its devices): the loop devices over files
// of the dead mount at dir are kept, in use or not, and returned for
// RebindLoops once the new mount is up. Nothing is returned for a live mount, a
// plain directory or a missing one.
func TakeOverStale(dir string) ([]string, error) {
	abs, dead, err := deadFuseMount(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no directory, no mount
	}
	if err != nil || !dead {
		return nil, err
	}
	// Listed while the dead mount is still in the tree: afterwards the kernel
	// names their backing files relative to the detached mount.
	loops, err := loopsUnder(abs)
	if err != nil {
		return nil, err
	}
	if err := syscall.Unmount(abs, 0); err != nil {
		// Still referenced by the loop devices: detach it from the tree; the
		// kernel frees it once the last loop device has moved to the new file.
		if err := syscall.Unmount(abs, syscall.MNT_DETACH); err != nil {
			return nil, fmt.Errorf("fuseblk: unmount stale %s: %w", abs, err)
		}
	}
	devs := make([]string, 0, len(loops))
	for _, l := range loops {
		devs = append(devs, l.dev)
	}
	return devs, nil
}

// RebindLoops moves each loop device onto path (LOOP_CHANGE_FD), the file that a
// new mount serves in place of the dead one: the block devices, and the file
// systems mounted on them, work again without being set up anew. The kernel
// allows this only for read-only loop devices and a file of the same size; a
// writable loop device cannot move and keeps failing its I/O (its error is
// joined into the result, the others are moved still).
func RebindLoops(devs []string, path string) error {
	var errs []error
	for _, dev := range devs {
		if err := rebindLoop(dev, path); err != nil {
			errs = append(errs, fmt.Errorf("fuseblk: rebind %s to %s: %w", dev, path, err))
		}
	}
	return errors.Join(errs...)
}

// loopChangeFD is LOOP_CHANGE_FD of <linux/loop.h>, which x/sys/unix does not define.
const loopChangeFD = 0x4C06

func rebindLoop(dev, path string) error {
	lf, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer lf.Close()
	info, err := unix.IoctlLoopGetStatus64(int(lf.Fd()))
	if err != nil {
		return fmt.Errorf("LOOP_GET_STATUS64: %w", err)
	}
	if info.Flags&unix.LO_FLAGS_READ_ONLY == 0 {
		return errors.New("a writable loop device cannot change its backing file (LOOP_CHANGE_FD needs a read-only one)")
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), loopChangeFD, int(f.Fd())); err != nil {
		return fmt.Errorf("LOOP_CHANGE_FD: %w", err)
	}
	return nil
}
