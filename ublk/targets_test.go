package ublk

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/blockdev"
	"golang.org/x/sys/unix"
)

// memTarget is a RAM disk that counts flushes and records discards.
type memTarget struct {
	mu       sync.Mutex
	data     []byte
	flushes  atomic.Int64
	discards []span
	zeroes   []span
}

type span struct{ off, n int64 }

func newMemTarget(size int) *memTarget { return &memTarget{data: make([]byte, size)} }

func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, errors.New("memTarget: read out of range")
	}
	return copy(p, m.data[off:]), nil
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, errors.New("memTarget: write out of range")
	}
	return copy(m.data[off:], p), nil
}

func (m *memTarget) Flush() error { m.flushes.Add(1); return nil }
func (m *memTarget) Size() int64  { return int64(len(m.data)) }

func (m *memTarget) snapshot(off, n int64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data[off:off+n]...)
}

// discardTarget adds Discarder; zeroTarget adds ZeroWriter as well.
type discardTarget struct{ *memTarget }

func (d discardTarget) Discard(off, n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+n])
	d.discards = append(d.discards, span{off, n})
	return nil
}

type zeroTarget struct{ discardTarget }

func (z zeroTarget) WriteZeroes(off, n int64) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	clear(z.data[off : off+n])
	z.zeroes = append(z.zeroes, span{off, n})
	return nil
}

// roTarget is a read-only memTarget.
type roTarget struct{ *memTarget }

func (roTarget) ReadOnly() bool                           { return true }
func (roTarget) WriteAt(p []byte, off int64) (int, error) { return 0, blockdev.ErrReadOnly }

// badTarget fails every read and write that touches [badOff, badOff+badLen).
type badTarget struct {
	*memTarget
	badOff, badLen int64
}

func (b badTarget) hits(off int64, n int) bool {
	return off < b.badOff+b.badLen && off+int64(n) > b.badOff
}

func (b badTarget) ReadAt(p []byte, off int64) (int, error) {
	if b.hits(off, len(p)) {
		return 0, errors.New("badTarget: injected read error")
	}
	return b.memTarget.ReadAt(p, off)
}

func (b badTarget) WriteAt(p []byte, off int64) (int, error) {
	if b.hits(off, len(p)) {
		return 0, errors.New("badTarget: injected write error")
	}
	return b.memTarget.WriteAt(p, off)
}

// fileTarget serves a file (for recovery: the data outlives the server).
type fileTarget struct {
	f    *os.File
	size int64
}

func openFileTarget(path string, size int64) (*fileTarget, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return &fileTarget{f: f, size: size}, nil
}

func (f *fileTarget) ReadAt(p []byte, off int64) (int, error)  { return f.f.ReadAt(p, off) }
func (f *fileTarget) WriteAt(p []byte, off int64) (int, error) { return f.writeIn(p, off) }
func (f *fileTarget) Flush() error                             { return f.f.Sync() }
func (f *fileTarget) Size() int64                              { return f.size }
func (f *fileTarget) Discard(off, n int64) error {
	return unix.Fallocate(int(f.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// writeIn refuses writes past the device end, which would grow the file.
func (f *fileTarget) writeIn(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > f.size {
		return 0, errors.New("fileTarget: write out of range")
	}
	return f.f.WriteAt(p, off)
}
