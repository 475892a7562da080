package fuseblk

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/obd-project/obd/blockdev"
)

// sectorSize is the unit a Target accepts offsets and lengths in.
const sectorSize = 512

// rootDir is the mount's root: a directory holding only the device file.
type rootDir struct {
	fs.Inode
	name  string
	file  *deviceFile
	mtime time.Time
}

var (
	_ fs.NodeOnAdder   = (*rootDir)(nil)
	_ fs.NodeGetattrer = (*rootDir)(nil)
)

func (r *rootDir) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(r.name, ch, false)
}

func (r *rootDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.SetTimes(&r.mtime, &r.mtime, &r.mtime)
	return 0
}

// deviceFile serves a Target as a regular file. Requests are served concurrently;
// the Target must be safe for concurrent use (as blockdev requires).
type deviceFile struct {
	fs.Inode
	t        blockdev.Target
	size     int64
	readOnly bool
	uid, gid uint32 // the owner: only it (root) may open the file
	mtime    time.Time
	onError  func(op string, off, length int64, err error)

	// opens counts open file handles (loop devices hold one while bound), so a
	// stop can tell whether anyone still uses the device.
	opens atomic.Int64

	// rmw serialises read-modify-write of partial sectors (exclusive) against every
	// other write (shared), so a partial write never resurrects stale bytes.
	rmw sync.RWMutex
}

var (
	_ fs.NodeGetattrer = (*deviceFile)(nil)
	_ fs.NodeSetattrer = (*deviceFile)(nil)
	_ fs.NodeOpener    = (*deviceFile)(nil)
	_ fs.NodeReleaser  = (*deviceFile)(nil)
	_ fs.NodeReader    = (*deviceFile)(nil)
	_ fs.NodeWriter    = (*deviceFile)(nil)
	_ fs.NodeFsyncer   = (*deviceFile)(nil)
	_ fs.NodeFlusher   = (*deviceFile)(nil)
	_ fs.NodeAllocater = (*deviceFile)(nil)
)

// fillAttr gives the file owner-only modes: with default_permissions the kernel
// enforces them, so no other user can read a device or write it.
func (f *deviceFile) fillAttr(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o600
	if f.readOnly {
		a.Mode = syscall.S_IFREG | 0o400
	}
	a.Uid, a.Gid = f.uid, f.gid
	a.Nlink = 1
	a.Size = uint64(f.size)
	a.Blocks = uint64((f.size + 511) / 512)
	a.Blksize = 4096
	a.SetTimes(&f.mtime, &f.mtime, &f.mtime)
}

func (f *deviceFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fillAttr(&out.Attr)
	return 0
}

// Setattr accepts only no-op changes: the size is the device size, and mode, owner
// and times are fixed (chmod succeeding silently would lie about writability).
func (f *deviceFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != f.size {
		return syscall.EPERM
	}
	if _, ok := in.GetMode(); ok {
		return syscall.EPERM
	}
	f.fillAttr(&out.Attr)
	return 0
}

// Open keeps the page cache across opens: every change to the Target goes through
// this file (write-through, no writeback cache), so cached pages stay coherent.
// Mounted.InvalidateCache exists for a Target changed behind our back.
func (f *deviceFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.readOnly && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	f.opens.Add(1)
	// A handle (of no use otherwise) makes go-fuse send us the Release.
	return &openHandle{}, fuse.FOPEN_KEEP_CACHE, 0
}

// openHandle is one open of the device file; every operation goes to the node.
type openHandle struct{}

func (f *deviceFile) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	f.opens.Add(-1)
	return 0
}

func (f *deviceFile) report(op string, off, length int64, err error) {
	if f.onError != nil {
		f.onError(op, off, length, err)
	}
}

// clamp limits [off, off+n) to the device; it returns 0 at or past the end.
func (f *deviceFile) clamp(off int64, n int) int {
	if off < 0 || off >= f.size {
		return 0
	}
	return int(min(int64(n), f.size-off))
}

// readFull reads exactly len(p) bytes at off from the Target.
func (f *deviceFile) readFull(p []byte, off int64) error {
	n, err := f.t.ReadAt(p, off)
	if n == len(p) && (err == nil || errors.Is(err, io.EOF)) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	f.report("read", off, int64(len(p)), err)
	return err
}

func (f *deviceFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := f.clamp(off, len(dest))
	if n == 0 {
		return fuse.ReadResultData(nil), 0
	}
	if off%sectorSize == 0 && n%sectorSize == 0 {
		if f.readFull(dest[:n], off) != nil {
			return nil, syscall.EIO
		}
		return fuse.ReadResultData(dest[:n]), 0
	}
	start, buf := f.sectorSpan(off, n)
	if f.readFull(buf, start) != nil {
		return nil, syscall.EIO
	}
	copy(dest, buf[off-start:][:n])
	return fuse.ReadResultData(dest[:n]), 0
}

// sectorSpan returns the sector-aligned range covering [off, off+n), cut at the
// device end, with a buffer of its length.
func (f *deviceFile) sectorSpan(off int64, n int) (int64, []byte) {
	start := off &^ (sectorSize - 1)
	end := min((off+int64(n)+sectorSize-1)&^(sectorSize-1), f.size)
	return start, make([]byte, end-start)
}

func (f *deviceFile) writeErrno(op string, off int64, length int, err error) syscall.Errno {
	if errors.Is(err, blockdev.ErrReadOnly) {
		return syscall.EROFS
	}
	f.report(op, off, int64(length), err)
	return syscall.EIO
}

// writeSpan writes data at off, doing read-modify-write of partial sectors.
func (f *deviceFile) writeSpan(data []byte, off int64) syscall.Errno {
	if off%sectorSize == 0 && len(data)%sectorSize == 0 {
		f.rmw.RLock()
		defer f.rmw.RUnlock()
		if _, err := f.t.WriteAt(data, off); err != nil {
			return f.writeErrno("write", off, len(data), err)
		}
		return 0
	}
	f.rmw.Lock()
	defer f.rmw.Unlock()
	start, buf := f.sectorSpan(off, len(data))
	if f.readFull(buf, start) != nil {
		return syscall.EIO
	}
	copy(buf[off-start:], data)
	if _, err := f.t.WriteAt(buf, start); err != nil {
		return f.writeErrno("write", start, len(buf), err)
	}
	return 0
}

func (f *deviceFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if f.readOnly {
		return 0, syscall.EROFS
	}
	n := f.clamp(off, len(data))
	if n == 0 {
		if len(data) == 0 {
			return 0, 0
		}
		return 0, syscall.ENOSPC // a block device cannot grow
	}
	if errno := f.writeSpan(data[:n], off); errno != 0 {
		return 0, errno
	}
	return uint32(n), 0
}

func (f *deviceFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	if f.readOnly {
		return 0
	}
	if err := f.t.Flush(); err != nil {
		f.report("flush", 0, 0, err)
		return syscall.EIO
	}
	return 0
}

// Flush runs on every close(2); durability is fsync's job, so it does nothing.
func (f *deviceFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

// Allocate maps fallocate(2): PUNCH_HOLE → Discard (the loop driver's discard),
// ZERO_RANGE → WriteZeroes, Discard or zero writes; plain allocation is a no-op
// because every byte of a device already exists.
func (f *deviceFile) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if f.readOnly {
		return syscall.EROFS
	}
	if off > uint64(f.size) || size > uint64(f.size)-off {
		if mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
			return syscall.ENOSPC
		}
		size = uint64(f.size) - min(off, uint64(f.size))
	}
	start, length := int64(off), int64(size)
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case 0:
		return 0
	case unix.FALLOC_FL_PUNCH_HOLE:
		if mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
			return syscall.EINVAL // fallocate(2) requires KEEP_SIZE with PUNCH_HOLE
		}
		if !blockdev.CapsOf(f.t).Discard {
			return syscall.EOPNOTSUPP
		}
		return f.clearRange(start, length, func(o, l int64) error { return blockdev.Discard(f.t, o, l) })
	case unix.FALLOC_FL_ZERO_RANGE:
		return f.clearRange(start, length, func(o, l int64) error { return blockdev.WriteZeroes(f.t, o, l) })
	default:
		return syscall.EOPNOTSUPP
	}
}

// clearRange zeroes the partial sectors at both ends by writing and hands the
// aligned middle to clear.
func (f *deviceFile) clearRange(off, length int64, clear func(off, length int64) error) syscall.Errno {
	if length <= 0 {
		return 0
	}
	end := off + length
	alignedStart := (off + sectorSize - 1) &^ (sectorSize - 1)
	alignedEnd := end &^ (sectorSize - 1)
	if alignedStart >= alignedEnd { // inside one or two partial sectors
		return f.writeSpan(make([]byte, length), off)
	}
	if alignedStart > off {
		if errno := f.writeSpan(make([]byte, alignedStart-off), off); errno != 0 {
			return errno
		}
	}
	if end > alignedEnd {
		if errno := f.writeSpan(make([]byte, end-alignedEnd), alignedEnd); errno != 0 {
			return errno
		}
	}
	f.rmw.RLock()
	defer f.rmw.RUnlock()
	if err := clear(alignedStart, alignedEnd-alignedStart); err != nil {
		return f.writeErrno("discard", alignedStart, int(alignedEnd-alignedStart), err)
	}
	return 0
}
