// Package atomicfile is the one way obd replaces a file, with one durability rule:
// the new content is written to a temporary file in the destination's directory
// (same file system, so the rename is atomic), the file is synced, renamed over the
// destination, and the directory is synced. A reader sees the old content or the
// new, whole; after a crash the path holds one of them, never a torn or empty file.
//
// WriteFile and Write build on github.com/google/renameio/v2; Rename and
// RenameNoReplace finish a temporary file that the caller created and synced itself
// (the offline commands track theirs for removal on a signal; a download fills a
// file that outlives restarts).
package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"
)

// WriteFile replaces path with data; the file gets mode perm (umask not applied).
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Write(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write replaces path with what write writes; the file gets mode perm (umask not
// applied). When write or any step fails, path is untouched and the temporary file
// is removed.
func Write(path string, perm os.FileMode, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(dir), renameio.WithStaticPermissions(perm))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if err := write(f); err != nil {
		return err
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// Rename moves the synced file tmp over dst (in the same directory) and syncs the
// directory, so the rename itself survives a crash.
func Rename(tmp, dst string) error {
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	syncDir(filepath.Dir(dst))
	return nil
}

// RenameNoReplace is Rename that never replaces a file that exists at dst
// (renameat2 RENAME_NOREPLACE, or link+unlink where the file system lacks it); an
// existing dst gives an error that matches os.ErrExist.
func RenameNoReplace(tmp, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = os.Link(tmp, dst); err == nil {
			os.Remove(tmp)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: tmp, New: dst, Err: err}
	}
	syncDir(filepath.Dir(dst))
	return nil
}

// syncDir makes a rename in dir durable. It is best effort: once the rename is
// done the new content is in place, and some file systems refuse to sync a
// directory.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
