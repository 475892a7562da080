package fuseblk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/blockdev/blockdevtest"
)

// The test targets hold to the blockdev contract, and so does the device file as
// the kernel serves it: pread/pwrite, fsync, and fallocate PUNCH_HOLE (discard) and
// ZERO_RANGE (write-zeroes) on the FUSE file, over targets of each capability set.
func TestConformance(t *testing.T) {
	const size = 1 << 20
	t.Run("memTarget", func(t *testing.T) {
		blockdevtest.Run(t, func(*testing.T) blockdev.Target { return newMemTarget(size) },
			blockdevtest.Options{Caps: &blockdev.Caps{Discard: true}})
	})
	t.Run("plainTarget", func(t *testing.T) {
		blockdevtest.Run(t, func(*testing.T) blockdev.Target { return plainTarget{newMemTarget(size)} },
			blockdevtest.Options{Caps: &blockdev.Caps{}})
	})
	for _, caps := range []blockdev.Caps{{}, {Discard: true}, {WriteZeroes: true}, {Discard: true, WriteZeroes: true}, {ReadOnly: true}} {
		inner := caps
		// The file always zeroes ranges (ZERO_RANGE falls back to writes); it
		// discards only when the target can.
		want := blockdev.Caps{ReadOnly: inner.ReadOnly, Discard: inner.Discard, WriteZeroes: true}
		t.Run(fmt.Sprintf("file/%+v", inner), func(t *testing.T) {
			requireRoot(t)
			blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
				tgt, m := blockdevtest.NewMem(size, inner)
				fill := make([]byte, size)
				for i := range fill {
					fill[i] = byte(i*7 + i>>9)
				}
				m.Fill(fill)
				return openMountedFile(t, mountT(t, tgt, nil).Path(), size, inner)
			}, blockdevtest.Options{Caps: &want, MaxIO: 256 << 10})
		})
	}
}

// mountedFile is the FUSE device file opened as a blockdev.Target.
type mountedFile struct {
	f        *os.File
	size     int64
	readOnly bool
}

// discardingFile adds discard, for targets that have it.
type discardingFile struct{ *mountedFile }

func openMountedFile(t *testing.T, path string, size int64, caps blockdev.Caps) blockdev.Target {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if caps.ReadOnly {
		if !errors.Is(err, syscall.EROFS) {
			t.Fatalf("open of a read-only device file for writing: %v, want EROFS", err)
		}
		f, err = os.Open(path)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	m := &mountedFile{f: f, size: size, readOnly: caps.ReadOnly}
	if caps.Discard {
		return discardingFile{m}
	}
	return m
}

func (m *mountedFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := m.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}

func (m *mountedFile) WriteAt(p []byte, off int64) (int, error) {
	if m.readOnly {
		return 0, blockdev.ErrReadOnly // opened O_RDONLY: the mount refused O_RDWR
	}
	return m.f.WriteAt(p, off)
}

func (m *mountedFile) Flush() error   { return m.f.Sync() }
func (m *mountedFile) Size() int64    { return m.size }
func (m *mountedFile) ReadOnly() bool { return m.readOnly }

func (m *mountedFile) WriteZeroes(off, n int64) error {
	return m.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (d discardingFile) Discard(off, n int64) error {
	return d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (m *mountedFile) fallocate(mode uint32, off, n int64) error {
	if err := unix.Fallocate(int(m.f.Fd()), mode, off, n); err != nil {
		return &os.PathError{Op: "fallocate", Path: m.f.Name(), Err: err}
	}
	return nil
}
