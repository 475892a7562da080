package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/obd-project/obd/lsmt"
	"golang.org/x/sys/unix"
)

// mkfsUUID is the fixed file-system uuid of the reference's make_extfs (PhotonLibOS
// fs/extfs/mkfs.cpp): formatting is reproducible.
const mkfsUUID = "bdf7bb2e-c231-43ce-87c2-299792458ef5"

// mkfsArgs are mkfs.ext4's options for the reference's make_extfs parameters: 4 KiB
// blocks, 16 KiB per inode, 256-byte inodes, 5% reserved, no journal, flex_bg with one
// group per flex, backup superblocks in group 1 and the last group only (sparse_super2),
// no mount-count checks (half_md4 directory hashes are set by tune2fs afterwards).
func mkfsArgs(path string, size int64) []string {
	return []string{"-q", "-F", "-t", "ext4",
		"-b", "4096", "-i", "16384", "-I", "256", "-m", "5", "-G", "1",
		"-O", "none,64bit,sparse_super,sparse_super2,filetype,resize_inode,dir_index,ext_attr,dir_nlink,large_file,huge_file,flex_bg,extent,extra_isize",
		"-E", "num_backup_sb=2,nodiscard,root_owner=0:0",
		"-U", mkfsUUID,
		path, fmt.Sprintf("%dk", size/1024)}
}

// mkfsLayer formats the new layer's disk as ext4 (overlaybd-create --mkfs). mkfs.ext4
// writes into a sparse scratch file next to the layer; its data (not its holes, nor
// all-zero blocks) is then written into the layer, as a device would have received it.
func mkfsLayer(w *lsmt.Writable, near string) error {
	size := int64(w.VirtualSize())
	if size < 1<<20 {
		return fmt.Errorf("--mkfs: a %d-byte disk is too small for ext4", size)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("--mkfs needs mkfs.ext4 (e2fsprogs): %w", err)
	}
	raw, err := createTemp(near + ".mkfs")
	if err != nil {
		return err
	}
	defer func() {
		raw.Close()
		removeTemp(raw.Name())
	}()
	if err := raw.Truncate(size); err != nil {
		return err
	}
	args := mkfsArgs(raw.Name(), size)
	cmd := exec.Command(mkfs, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("--mkfs: mkfs.ext4 %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	// The directory hash is a mke2fs.conf setting, not an option: set it afterwards.
	if out, err := exec.Command("tune2fs", "-E", "hash_alg=half_md4", raw.Name()).CombinedOutput(); err != nil {
		return fmt.Errorf("--mkfs: tune2fs -E hash_alg=half_md4: %w: %s", err, bytes.TrimSpace(out))
	}
	return copyDataRuns(w, raw, size)
}

// copyDataRuns writes the non-zero 4 KiB blocks of f's data runs (SEEK_DATA/SEEK_HOLE)
// into w at the same offsets.
func copyDataRuns(w *lsmt.Writable, f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	zero := make([]byte, 4096)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			data = off // no SEEK_DATA: read everything
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		hole = min(hole, size)
		for pos := data &^ 4095; pos < hole; {
			n := min(int64(len(buf)), hole-pos)
			b := buf[:n]
			if _, err := f.ReadAt(b, pos); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("--mkfs: reading the formatted disk at %d: %w", pos, err)
			}
			for i := int64(0); i < n; i += 4096 {
				blk := b[i:min(i+4096, n)]
				if len(blk)%lsmt.SectorSize != 0 || bytes.Equal(blk, zero[:len(blk)]) {
					continue
				}
				if _, err := w.WriteAt(blk, pos+i); err != nil {
					return fmt.Errorf("--mkfs: writing the layer at %d: %w", pos+i, err)
				}
			}
			pos += n
		}
		off = hole
	}
	return nil
}
