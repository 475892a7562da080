// Package fuseblk is the block-device fallback for kernels without ublk: it exposes
// a blockdev.Target as one regular file on a FUSE mount, which `mount -o loop` and
// `losetup` turn into a block device.
//
// Caching: the file is served without direct I/O, so the kernel page cache (and its
// read-ahead) answers repeated reads; writes are write-through (no FUSE writeback
// cache), so every write reaches the Target before write(2) returns, and
// fallocate(PUNCH_HOLE/ZERO_RANGE) drops the cached pages of its range in the
// kernel. The cache therefore stays coherent as long as the Target changes only
// through this file; call Mounted.InvalidateCache after changing it any other way.
// A loop device set up with `losetup --direct-io=on` bypasses this cache (the block
// layer above caches instead), avoiding caching the data twice.
//
// Mounting uses mount(2) directly (no fusermount), so it needs root.
package fuseblk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/obd-project/obd/blockdev"
)

// FSType is the file system type of our mounts as listed in /proc/self/mountinfo.
const FSType = "fuse.obdblk"

// DefaultMaxIO is the largest read or write request the kernel sends (its maximum).
const DefaultMaxIO = 1 << 20

// Options tunes a mount. The zero value is ready to use.
type Options struct {
	// MaxIO is the largest FUSE read/write request in bytes (default and cap 1 MiB).
	MaxIO int
	// ReadOnly exposes the file read-only (mode 0400, EROFS on write) even if the
	// Target accepts writes. A Target that is blockdev.IsReadOnly is always read-only.
	ReadOnly bool
	// OnIOError, if set, is told about every Target error turned into EIO. It is
	// called from the serving goroutines, possibly concurrently.
	OnIOError func(op string, off, length int64, err error)
	// Debug logs every FUSE request (go-fuse's debug output).
	Debug bool
	// Logger receives go-fuse's own log lines, at debug level (nil: zap.L()).
	Logger *zap.Logger
}

// Mounted is a live mount serving one Target as the file Path().
type Mounted struct {
	dir, path string
	server    *fuse.Server
	file      *deviceFile

	mu     sync.Mutex
	closed bool
}

// Mount serves t as the regular file dir/name on a new FUSE mount at dir (which must
// exist). A stale mount of ours left at dir by a dead process is cleaned up first.
func Mount(dir, name string, t blockdev.Target, opts *Options) (*Mounted, error) {
	if opts == nil {
		opts = &Options{}
	}
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return nil, fmt.Errorf("fuseblk: invalid file name %q", name)
	}
	if t.Size() <= 0 || t.Size()%sectorSize != 0 {
		return nil, fmt.Errorf("fuseblk: target size %d, want a positive multiple of %d", t.Size(), sectorSize)
	}
	abs, err := resolveDir(dir)
	if err != nil {
		return nil, fmt.Errorf("fuseblk: %w", err)
	}
	if _, err := CleanupStale(abs); err != nil {
		return nil, err
	}
	maxIO := opts.MaxIO
	if maxIO <= 0 || maxIO > DefaultMaxIO {
		maxIO = DefaultMaxIO
	}
	now := time.Now()
	file := &deviceFile{
		t:        t,
		size:     t.Size(),
		readOnly: opts.ReadOnly || blockdev.IsReadOnly(t),
		uid:      uint32(os.Getuid()),
		gid:      uint32(os.Getgid()),
		mtime:    now,
		onError:  opts.OnIOError,
	}
	root := &rootDir{name: name, file: file, mtime: now}
	lg := opts.Logger
	if lg == nil {
		lg = zap.L()
	}
	// go-fuse's internal messages go through zap at debug, not to stderr.
	fuseLog, err := zap.NewStdLogAt(lg.With(zap.String("fuse", abs)), zapcore.DebugLevel)
	if err != nil {
		return nil, fmt.Errorf("fuseblk: %w", err)
	}
	timeout := time.Hour // attributes never change while mounted
	fsOpts := &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		Logger:       fuseLog,
		MountOptions: fuse.MountOptions{
			FsName:            "obd:" + name,
			Name:              strings.TrimPrefix(FSType, "fuse."),
			DirectMountStrict: true,
			// allow_other lets root's loop driver and mount in; default_permissions
			// makes the kernel enforce the file's owner-only mode for everyone else.
			AllowOther:    true,
			Options:       []string{"default_permissions"},
			MaxWrite:      maxIO,
			MaxReadAhead:  maxIO,
			MaxBackground: 64,
			DisableXAttrs: true, // spares a getxattr(security.capability) per write
			Debug:         opts.Debug,
			// Reads answer from memory, never from a file descriptor: splicing
			// never applies, and failed attempts only printed "trySplice" noise.
			DisableSplice: true,
			Logger:        fuseLog,
		},
	}
	server, err := fs.Mount(abs, root, fsOpts)
	if err != nil {
		return nil, fmt.Errorf("fuseblk: mount %s: %w", abs, err)
	}
	return &Mounted{dir: abs, path: filepath.Join(abs, name), server: server, file: file}, nil
}

// Path is the device file, for `mount -o loop` or `losetup`.
func (m *Mounted) Path() string { return m.path }

// Dir is the mount point.
func (m *Mounted) Dir() string { return m.dir }

// ReadOnly reports whether the file rejects writes.
func (m *Mounted) ReadOnly() bool { return m.file.readOnly }

// InvalidateCache drops the kernel's cached pages of the file, for a Target whose
// content changed other than through the file.
func (m *Mounted) InvalidateCache() error {
	if errno := m.file.NotifyContent(0, 0); errno != 0 {
		return fmt.Errorf("fuseblk: invalidate %s: %w", m.path, errno)
	}
	return nil
}

// unmountTimeout bounds how long Close waits for the kernel to let go of the file.
var unmountTimeout = 5 * time.Second

// Close unmounts. Loop devices backed by the file are detached first if nothing
// uses them; if one is still mounted or held, Close fails with an error naming it
// and the mount stays up (fix and call Close again). Close never waits for longer
// than a few seconds on a busy mount point.
func (m *Mounted) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	if err := detachLoops(m.path); err != nil {
		return fmt.Errorf("fuseblk: close %s: %w", m.path, err)
	}
	deadline := time.Now().Add(unmountTimeout)
	for {
		// server.Unmount retries umount(2) a few times, then waits for its serve loops.
		err := m.server.Unmount()
		if err == nil {
			break
		}
		if errors.Is(err, syscall.EINVAL) && !m.mounted() {
			// Someone else unmounted it; the serve loops end on their own.
			m.server.Wait()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fuseblk: close %s: unmount %s: %w (is the file still open?)", m.path, m.dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.closed = true
	return nil
}

// Users names what keeps the device file in use: loop devices over it that are
// mounted, held, or attached without autoclear (`losetup` without -d yet), and
// processes that have it open. Empty means nobody: Close will succeed (it
// detaches idle autoclear loop devices, such as one left by an unmount).
func (m *Mounted) Users() []string {
	loops, _ := loopsBackedBy(m.path)
	var out []string
	for _, l := range loops {
		switch u := l.user(); {
		case u != "":
			out = append(out, l.dev+" "+u)
		case !l.autoclear():
			out = append(out, l.dev+" is attached to it (losetup -d "+l.dev+")")
		}
	}
	// Each bound loop device holds one open handle; more are processes.
	if n := m.file.opens.Load() - int64(len(loops)); n > 0 {
		if ps := openers(m.path); len(ps) > 0 {
			out = append(out, ps...)
		} else {
			out = append(out, fmt.Sprintf("open %d times", n))
		}
	}
	return out
}

// ForceClose unmounts even while the file is in use. File systems mounted from
// its loop devices are synced first, so their dirty data reaches the Target; the
// loop devices are then detached (by the kernel at their last close) and a busy
// mount is detached lazily: the mount point is free at once, never left answering
// ENOTCONN, and the remaining users get I/O errors once this process is gone.
func (m *Mounted) ForceClose() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	loops, err := loopsBackedBy(m.path)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range loops {
		for _, p := range l.mountPoints() {
			if err := syncFS(p); err != nil {
				errs = append(errs, fmt.Errorf("sync %s (on %s): %w", p, l.dev, err))
			}
		}
		if err := l.detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", l.dev, err))
		}
	}
	if err := syscall.Unmount(m.dir, 0); err == nil || !m.mounted() {
		m.server.Wait() // the serve loops end with the mount
	} else if err := syscall.Unmount(m.dir, syscall.MNT_DETACH); err != nil {
		return errors.Join(append(errs, fmt.Errorf("fuseblk: unmount %s: %w", m.dir, err))...)
	}
	m.closed = true
	return errors.Join(errs...)
}

// syncFS writes back the dirty data of the file system mounted at dir.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// mounted reports whether our FUSE mount is still at dir.
func (m *Mounted) mounted() bool {
	mnt, ok, err := mountAt(m.dir)
	return err != nil || ok && mnt.fsType == FSType
}

// CleanupStale unmounts a dead FUSE mount at dir: one whose server process is gone
// (the mount point fails with ENOTCONN), as left by a killed process. Idle loop
// devices over files below dir are detached first. It reports whether it unmounted
// anything; a live mount or a plain directory is left alone.
func CleanupStale(dir string) (bool, error) {
	abs, dead, err := deadFuseMount(dir)
	if err != nil || !dead {
		return false, err
	}
	loops, err := loopsUnder(abs)
	if err != nil {
		return false, err
	}
	var busy []string
	for _, l := range loops {
		if u := l.user(); u != "" {
			busy = append(busy, l.dev+" ("+u+")")
			continue
		}
		_ = l.detach() // best effort: the lazy unmount below works either way
	}
	if err := syscall.Unmount(abs, 0); err != nil {
		// Still referenced (e.g. by a mounted loop device): detach it from the
		// tree so the directory is usable again; the kernel frees it on last use.
		if err := syscall.Unmount(abs, syscall.MNT_DETACH); err != nil {
			return false, fmt.Errorf("fuseblk: unmount stale %s: %w", abs, err)
		}
	}
	if len(busy) > 0 {
		return true, fmt.Errorf("fuseblk: lazily unmounted stale %s; loop devices still in use: %s", abs, strings.Join(busy, ", "))
	}
	return true, nil
}

// deadMount reports whether the FUSE mount at dir lost its server. The stat is
// forced to the server: with default_permissions the kernel caches the root's
// attributes after its permission checks, and a cached stat succeeds.
func deadMount(dir string) bool {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &stx)
	return errors.Is(err, syscall.ENOTCONN)
}

// detachLoops detaches every loop device backed by path, or fails naming the first
// one still in use without detaching any.
func detachLoops(path string) error {
	loops, err := loopsBackedBy(path)
	if err != nil {
		return err
	}
	for _, l := range loops {
		if u := l.user(); u != "" {
			return fmt.Errorf("still attached to %s, which is %s: release it first", l.dev, u)
		}
	}
	for _, l := range loops {
		if err := l.detach(); err != nil {
			return fmt.Errorf("detach %s: %w", l.dev, err)
		}
	}
	return nil
}

// resolveDir makes dir absolute with symlinks in its parent resolved, the form the
// kernel shows in mountinfo and loop backing_file. The last element is not resolved:
// stat of a stale mount point fails.
func resolveDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	return filepath.Join(parent, filepath.Base(abs)), nil
}

func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }

// deadFuseMount resolves dir and reports whether a FUSE mount whose server is
// gone sits there.
func deadFuseMount(dir string) (abs string, dead bool, err error) {
	abs, err = resolveDir(dir)
	if err != nil || !deadMount(abs) {
		return abs, false, err
	}
	mnt, ok, err := mountAt(abs)
	if err != nil || !ok || !strings.HasPrefix(mnt.fsType, "fuse") {
		return abs, false, err
	}
	return abs, true, nil
}
