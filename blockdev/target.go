// Package blockdev defines what a virtual block device serves: a Target.
//
// Frontends (ublk, the FUSE fallback) serve any Target; image assembly produces one.
// Optional capabilities are small extra interfaces, in the style of go-fuse's fs
// package: a Target that can discard implements Discarder. Callers reach them only
// through the helpers in ops.go (CapsOf, Discard, WriteZeroes, IsReadOnly), which
// hold the one fallback rule and see through wrappers that implement Unwrapper.
// Package blockdevtest is the conformance suite every Target and wrapper runs.
package blockdev

import "errors"

// Target is the backing store of a block device. Offsets and lengths passed by a
// frontend are multiples of the logical block size (512). Implementations must be
// safe for concurrent use: multi-queue frontends call them from several goroutines.
type Target interface {
	// ReadAt fills p from the device at off. A range that cannot be read returns an
	// error (frontends report EIO for it); it never returns wrong bytes.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off. Read-only targets return ErrReadOnly.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every write acknowledged before the call durable.
	Flush() error
	// Size is the device size in bytes.
	Size() int64
}

// Discarder is implemented by targets that can drop a range (TRIM/UNMAP): the range
// reads as zeros afterwards.
type Discarder interface {
	Discard(off, length int64) error
}

// ZeroWriter is implemented by targets that can write zeros without a data buffer.
// Without it, the WriteZeroes helper falls back to Discard, then to WriteAt with a
// zero buffer.
type ZeroWriter interface {
	WriteZeroes(off, length int64) error
}

// ReadOnlyer is implemented by targets that know they reject writes; frontends then
// expose a read-only device.
type ReadOnlyer interface {
	ReadOnly() bool
}

// ErrReadOnly is returned by WriteAt and Discard of a read-only target.
var ErrReadOnly = errors.New("blockdev: read-only target")

// FileExtent is one piece of a device range mapped by a FileMapper: Length bytes
// stored in the open file Fd at Offset, or Length zero bytes when Fd < 0.
type FileExtent struct {
	Fd     int
	Offset int64
	Length int64
}

// FileMapper is implemented by targets whose data can live in plain local files
// (uncompressed layers, a writable upper), so that a frontend can read them with
// its own I/O (io_uring, zero copy into the request's pages) instead of ReadAt.
//
// MapFile appends to dst the extents that cover [off, off+n) of the device, in
// order, and reports true; or reports false when some part of the range is not in
// a local file (remote, compressed, or past the end): the frontend then calls
// ReadAt for the whole range. A file extent that the end of its file cuts short
// reads as zeros past that end, as ReadAt does. The fds stay open while the
// target is served; the mapping is the device's content at the time of the call
// (data a file extent names is not overwritten by later writes, except in place
// by a write to the same range, which a concurrent read may or may not see).
type FileMapper interface {
	MapFile(dst []FileExtent, off, n int64) ([]FileExtent, bool)
}
