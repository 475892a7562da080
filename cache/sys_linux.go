package cache

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Cross-process locking uses open-file-description (OFD) byte-range locks on the
// meta file: they belong to the open file, not the process, so they also exclude
// the eviction scan of this process (which opens its own descriptors), and the
// kernel drops them when a process dies mid-fill.

// lockRange takes a write lock on [off, off+n) of f; wait=false fails with
// errBusy instead of blocking.
func lockRange(f *os.File, off, n int64, wait bool) error {
	return setLock(f, unix.F_WRLCK, off, n, wait)
}

func unlockRange(f *os.File, off, n int64) error {
	return setLock(f, unix.F_UNLCK, off, n, false)
}

var errBusy = errors.New("range locked by another user")

func setLock(f *os.File, typ int16, off, n int64, wait bool) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: n}
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := sc.Control(func(fd uintptr) {
		for {
			lerr = unix.FcntlFlock(fd, cmd, &lk)
			if lerr != unix.EINTR {
				break
			}
		}
	}); err != nil {
		return err
	}
	if lerr == unix.EAGAIN || lerr == unix.EACCES {
		return errBusy
	}
	if lerr != nil {
		return &os.PathError{Op: "fcntl lock", Path: f.Name(), Err: lerr}
	}
	return nil
}

// flockFile takes a whole-file exclusive flock (the cache directory's eviction lock).
func flockFile(f *os.File, how int) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := sc.Control(func(fd uintptr) {
		for {
			lerr = unix.Flock(int(fd), how)
			if lerr != unix.EINTR {
				break
			}
		}
	}); err != nil {
		return err
	}
	if lerr != nil {
		return &os.PathError{Op: "flock", Path: f.Name(), Err: lerr}
	}
	return nil
}

// punchHole deallocates [off, off+n) of f, keeping its size.
func punchHole(f *os.File, off, n int64) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	if err := sc.Control(func(fd uintptr) {
		perr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}); err != nil {
		return err
	}
	if perr != nil {
		return &os.PathError{Op: "punch hole", Path: f.Name(), Err: perr}
	}
	return nil
}

// allocated is the disk space a file uses (st_blocks), not its apparent size.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

const (
	lockEx = unix.LOCK_EX
	lockUn = unix.LOCK_UN
)
