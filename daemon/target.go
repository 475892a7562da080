package daemon

import (
	"errors"
	"sync/atomic"

	"github.com/obd-project/obd/blockdev"
)

// countingTarget counts a device's I/O for `obd list`, forwarding every capability of
// the target it wraps.
type countingTarget struct {
	t                     blockdev.Target
	read, written         atomic.Int64
	readErrs, writeErrs   atomic.Int64
	flushes, discardBytes atomic.Int64
}

var errNoDiscard = errors.New("discard not supported by this target")

func (c *countingTarget) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.t.ReadAt(p, off)
	c.read.Add(int64(n))
	if err != nil {
		c.readErrs.Add(1)
	}
	return n, err
}

func (c *countingTarget) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.t.WriteAt(p, off)
	c.written.Add(int64(n))
	if err != nil {
		c.writeErrs.Add(1)
	}
	return n, err
}

func (c *countingTarget) Flush() error {
	c.flushes.Add(1)
	return c.t.Flush()
}

func (c *countingTarget) Size() int64 { return c.t.Size() }

func (c *countingTarget) ReadOnly() bool { return blockdev.IsReadOnly(c.t) }

func (c *countingTarget) Discard(off, n int64) error {
	d, ok := c.t.(blockdev.Discarder)
	if !ok {
		return errNoDiscard
	}
	c.discardBytes.Add(n)
	return d.Discard(off, n)
}

func (c *countingTarget) WriteZeroes(off, n int64) error {
	if z, ok := c.t.(blockdev.ZeroWriter); ok {
		return z.WriteZeroes(off, n)
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := c.WriteAt(buf[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}
