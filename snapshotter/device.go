package snapshotter

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/obd-project/obd/daemon/api"
)

// Devices is what the snapshotter needs from obd's device manager. It is kept small
// so that the snapshotter does not depend on the daemon's API types.
type Devices interface {
	// Attach serves the config.v1.json at configPath; path is a block device
	// (/dev/ublkbN) or a regular file (the FUSE frontend's image file).
	Attach(ctx context.Context, configPath string) (id, path string, err error)
	// Detach stops serving the device id.
	Detach(ctx context.Context, id string) error
}

// DaemonDevices attaches through a running `obd daemon`.
type DaemonDevices struct {
	Client   *api.Client
	Frontend api.Frontend
}

// Attach implements Devices.
func (d DaemonDevices) Attach(ctx context.Context, configPath string) (string, string, error) {
	st, err := d.Client.Attach(ctx, configPath, d.Frontend)
	if err != nil {
		return "", "", err
	}
	return strconv.Itoa(st.ID), st.Path, nil
}

// Detach implements Devices.
func (d DaemonDevices) Detach(ctx context.Context, id string) error {
	return d.Client.Detach(ctx, id, false)
}

// deviceRecord is block/device.json: what to undo at detach, kept on disk so that a
// restarted snapshotter finds the devices it attached.
type deviceRecord struct {
	ID     string `json:"id"`     // the device manager's id
	Path   string `json:"path"`   // what the device manager serves
	Block  string `json:"block"`  // the block device (Path, or a loop device over it)
	Loop   bool   `json:"loop"`   // Block is a loop device this snapshotter set up
	FsType string `json:"fsType"` // the file system found on Block
	// Inner is the loop device over Path under a stacked Block (recover.go).
	Inner string `json:"inner,omitempty"`
}

func readDeviceRecord(dir string) (*deviceRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, "device.json"))
	if err != nil {
		return nil, err
	}
	var r deviceRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "device.json"), err)
	}
	return &r, nil
}

// attachBlock attaches configPath and returns its block device; readOnly sets up a
// read-only loop device over a FUSE image file.
func attachBlock(ctx context.Context, devs Devices, blockDir, configPath string, readOnly bool) (*deviceRecord, error) {
	id, path, err := devs.Attach(ctx, configPath)
	if err != nil {
		if b, rerr := os.ReadFile(filepath.Join(blockDir, "init-debug.log")); rerr == nil && strings.HasPrefix(string(b), "failed:") {
			return nil, fmt.Errorf("attach %s: %w (%s)", configPath, err, strings.TrimSpace(string(b)))
		}
		return nil, fmt.Errorf("attach %s: %w", configPath, err)
	}
	rec := &deviceRecord{ID: id, Path: path, Block: path}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		devs.Detach(context.WithoutCancel(ctx), id)
		return nil, fmt.Errorf("attach %s: %s: %w", configPath, path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		if rec.Block, rec.Inner, err = loopOverFile(ctx, path, readOnly); err != nil {
			devs.Detach(context.WithoutCancel(ctx), id)
			return nil, err
		}
		rec.Loop = true
	}
	if err := writeFileAtomic(filepath.Join(blockDir, "device.json"), mustJSON(rec), 0o600); err != nil {
		detachBlock(context.WithoutCancel(ctx), devs, rec)
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(blockDir, "backstore_mark"), []byte(rec.Block), 0o644); err != nil {
		detachBlock(context.WithoutCancel(ctx), devs, rec)
		return nil, err
	}
	zap.L().Info("device attached", zap.String("config", configPath), zap.String("id", id), zap.String("device", rec.Block))
	return rec, nil
}

// detachBlock releases the loop device and the device manager's device.
func detachBlock(ctx context.Context, devs Devices, rec *deviceRecord) error {
	var errs []error
	// A loop device already released (a detach retried after the device manager
	// failed) is left alone, as is one reused for another file.
	backing := rec.Path // what Block is set up over
	if rec.Inner != "" {
		backing = rec.Inner
	}
	if rec.Loop && loopBacks(rec.Block, backing) {
		if err := loopDetach(ctx, rec.Block); err != nil {
			errs = append(errs, err)
		}
	}
	if rec.Inner != "" && loopBacks(rec.Inner, rec.Path) {
		// Still open by the outer one for a moment: the kernel then clears it on
		// its last close (autoclear).
		if err := loopDetach(ctx, rec.Inner); err != nil {
			errs = append(errs, err)
		}
	}
	if err := devs.Detach(ctx, rec.ID); err != nil {
		// The device manager drops a FUSE device only once the loop device let go of it.
		for i := 0; i < 50 && err != nil && rec.Loop; i++ {
			time.Sleep(100 * time.Millisecond)
			err = devs.Detach(ctx, rec.ID)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("detach device %s: %w", rec.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Superblock magics: ext2/3/4 at 1080 (0xEF53), erofs at 1024 (0xE0F5E1E2).
func detectFsType(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 2048)
	if _, err := io.ReadFull(f, buf); err != nil {
		return "", fmt.Errorf("%s: reading the superblock: %w", dev, err)
	}
	switch {
	case binary.LittleEndian.Uint32(buf[1024:]) == 0xE0F5E1E2:
		return "erofs", nil
	case binary.LittleEndian.Uint16(buf[1080:]) == 0xEF53:
		return "ext4", nil
	}
	return "", nil
}

// isMountPoint reports whether dir is mounted on (its device differs from its parent's).
func isMountPoint(dir string) bool {
	var a, b unix.Stat_t
	if unix.Stat(dir, &a) != nil || unix.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err) // only plain structs are marshalled
	}
	return b
}

// writeFileAtomic writes a temporary file and renames it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err = f.Write(data); err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// loopBacking is the file the loop device dev is set up over, as sysfs names it
// (an error: dev is unbound).
func loopBacking(dev string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	return strings.TrimSpace(string(b)), err
}

// fileLoop is the loop device set up over Path: Inner under a stacked Block, else Block.
func (rec *deviceRecord) fileLoop() string {
	if rec.Inner != "" {
		return rec.Inner
	}
	return rec.Block
}

// loopBacks: the loop device dev is set up over the file path.
func loopBacks(dev, path string) bool {
	back, err := loopBacking(dev)
	if err != nil {
		return false
	}
	if real, err := filepath.EvalSymlinks(path); err == nil && back == real {
		return true
	}
	return back == path
}
