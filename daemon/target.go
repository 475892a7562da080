package daemon

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/image"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// countingTarget counts a device's I/O for `obd list`. It intercepts only the Target
// methods; its Unwrap lets the blockdev helpers find the wrapped target's real
// capabilities (discard, write-zeroes, read-only), whose zero-buffer fallback
// writes still come through WriteAt and are counted.
type countingTarget struct {
	t                   blockdev.Target
	id                  int         // device id, for the log
	lg                  *zap.Logger // rate-limited; nil: errors are only counted
	read, written       atomic.Int64
	readErrs, writeErrs atomic.Int64
	flushes             atomic.Int64
}

// Unwrap implements blockdev.Unwrapper.
func (c *countingTarget) Unwrap() blockdev.Target { return c.t }

func (c *countingTarget) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.t.ReadAt(p, off)
	c.read.Add(int64(n))
	if err != nil {
		c.readErrs.Add(1)
		c.logIOError("read", off, len(p), err)
	}
	return n, err
}

func (c *countingTarget) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.t.WriteAt(p, off)
	c.written.Add(int64(n))
	if err != nil {
		c.writeErrs.Add(1)
		c.logIOError("write", off, len(p), err)
	}
	return n, err
}

func (c *countingTarget) Flush() error {
	c.flushes.Add(1)
	return c.t.Flush()
}

func (c *countingTarget) Size() int64 { return c.t.Size() }

// MapFile forwards blockdev.FileMapper, so that ublk reads the image's local
// files itself, and counts a mapped range as read (a failing file read then
// shows as EIO on the device, not in readErrs).
func (c *countingTarget) MapFile(dst []blockdev.FileExtent, off, n int64) ([]blockdev.FileExtent, bool) {
	m, ok := c.t.(blockdev.FileMapper)
	if !ok {
		return dst, false
	}
	if dst, ok = m.MapFile(dst, off, n); ok {
		c.read.Add(n)
	}
	return dst, ok
}

// readOnly is the wrapped target's read-only flag, for `obd list`.
func (c *countingTarget) readOnly() bool { return blockdev.IsReadOnly(c.t) }

// ioErrorLogger is lg sampled per message: in each second the first 10 I/O error
// lines are logged, then every 100th, so a failing device cannot flood the log
// (every error is still counted in the device's read/write error counters).
func ioErrorLogger(lg *zap.Logger) *zap.Logger {
	if lg == nil {
		lg = zap.L()
	}
	return lg.WithOptions(zap.WrapCore(func(core zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(core, time.Second, 10, 100)
	}))
}

// logIOError logs an error the frontend answers with EIO: the device, the
// request's device offset and length, and, when a lower layer failed, its index,
// digest (or file) and the offset within it.
func (c *countingTarget) logIOError(op string, off int64, n int, err error) {
	if c.lg == nil {
		return
	}
	fields := []zap.Field{zap.Int("device", c.id), zap.String("op", op), zap.Int64("offset", off), zap.Int("length", n)}
	var le *image.LayerError
	if errors.As(err, &le) {
		fields = append(fields, zap.Int("layer", le.Layer), zap.String("digest", le.Digest),
			zap.String("blob", le.Name), zap.Int64("layerOffset", le.Off))
	}
	c.lg.Warn("I/O error returned to the device (EIO)", append(fields, zap.NamedError("reason", err))...)
}
