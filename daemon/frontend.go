package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/fuseblk"
	"github.com/obd-project/obd/ublk"
	"golang.org/x/sys/unix"
)

// resolveFrontend picks the concrete frontend for auto.
func resolveFrontend(f Frontend) Frontend {
	if f == FrontendAuto || f == "" {
		if ublk.Available() {
			return FrontendUblk
		}
		return FrontendFUSE
	}
	return f
}

// served is a live device.
type served interface {
	Path() string
	Close() error
}

func serveFUSE(t blockdev.Target, mountDir string) (served, error) {
	if err := os.MkdirAll(filepath.Dir(mountDir), 0o700); err != nil {
		return nil, err
	}
	// A dead daemon's mount answers ENOTCONN, which even MkdirAll trips over.
	if _, err := fuseblk.CleanupStale(mountDir); err != nil {
		return nil, fmt.Errorf("stale mount at %s: %w", mountDir, err)
	}
	if err := os.MkdirAll(mountDir, 0o700); err != nil {
		return nil, err
	}
	m, err := fuseblk.Mount(mountDir, FUSEImageName, t, nil)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func ublkOptions(id int, recovery bool) ublk.Options {
	o := ublk.Options{ID: uint32(id), SpecificID: true}
	if recovery {
		if f, err := ublk.Features(); err == nil && f&ublk.FeatureUserRecovery != 0 {
			o.Recovery = true
			// Requests in flight at a crash are sent again to the new server: none is lost.
			o.RecoveryReissue = f&ublk.FeatureUserRecoveryReissue != 0
		}
	}
	return o
}

// blockDeviceBusy reports an error when path is mounted or held open exclusively: the
// kernel refuses an O_EXCL open of such a block device with EBUSY.
func blockDeviceBusy(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err == unix.EBUSY {
		return errors.New("device is in use (mounted or held open)")
	}
	if err == nil {
		unix.Close(fd)
	}
	return nil
}
