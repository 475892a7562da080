package blockdevtest

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/blockdev"
)

// Mem is a RAM disk, the reference Target for wrapper tests: NewMem returns it
// dressed with exactly the capabilities asked for. It counts the calls of its
// optional methods so tests can see which path a helper took.
type Mem struct {
	mu       sync.RWMutex
	data     []byte
	readOnly bool

	Writes, Discards, Zeroes, Flushes atomic.Int64
}

// NewMem returns a zero-filled RAM disk of size bytes that implements
// blockdev.Discarder only if caps.Discard, blockdev.ZeroWriter only if
// caps.WriteZeroes, and refuses writes if caps.ReadOnly.
func NewMem(size int64, caps blockdev.Caps) (blockdev.Target, *Mem) {
	m := &Mem{data: make([]byte, size), readOnly: caps.ReadOnly}
	switch {
	case caps.Discard && caps.WriteZeroes:
		return memDZ{m}, m
	case caps.Discard:
		return memD{m}, m
	case caps.WriteZeroes:
		return memZ{m}, m
	}
	return m, m
}

// Fill sets the disk's bytes (a read-only disk's content) from p, at offset 0.
func (m *Mem) Fill(p []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data, p)
}

func (m *Mem) check(op string, off int64, n int) error {
	if off < 0 || off > int64(len(m.data)) || int64(n) > int64(len(m.data))-off {
		return fmt.Errorf("blockdevtest.Mem: %s of %d bytes at %d beyond size %d", op, n, off, len(m.data))
	}
	return nil
}

// ReadAt implements blockdev.Target.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	if err := m.check("read", off, len(p)); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return copy(p, m.data[off:]), nil
}

// WriteAt implements blockdev.Target.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	if m.readOnly {
		return 0, blockdev.ErrReadOnly
	}
	if err := m.check("write", off, len(p)); err != nil {
		return 0, err
	}
	m.Writes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

// Flush implements blockdev.Target.
func (m *Mem) Flush() error { m.Flushes.Add(1); return nil }

// Size implements blockdev.Target.
func (m *Mem) Size() int64 { return int64(len(m.data)) }

// ReadOnly implements blockdev.ReadOnlyer.
func (m *Mem) ReadOnly() bool { return m.readOnly }

func (m *Mem) clearRange(op string, off, n int64, calls *atomic.Int64) error {
	if m.readOnly {
		return blockdev.ErrReadOnly
	}
	if err := m.check(op, off, int(n)); err != nil {
		return err
	}
	calls.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

type memD struct{ *Mem }

func (m memD) Discard(off, n int64) error { return m.clearRange("discard", off, n, &m.Discards) }

type memZ struct{ *Mem }

func (m memZ) WriteZeroes(off, n int64) error { return m.clearRange("write-zeroes", off, n, &m.Zeroes) }

type memDZ struct{ *Mem }

func (m memDZ) Discard(off, n int64) error { return m.clearRange("discard", off, n, &m.Discards) }
func (m memDZ) WriteZeroes(off, n int64) error {
	return m.clearRange("write-zeroes", off, n, &m.Zeroes)
}
