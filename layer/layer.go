// Package layer opens any OverlayBD layer blob as an LSMT layer, whatever its
// wrapping: the blob may be tar-wrapped (as registry blobs are), ZFile-compressed,
// both, or neither (docs/overlaybd-format.md §2). Callers never care which.
package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
)

// Wrapping records how a blob was unwrapped, outermost first.
type Wrapping struct {
	// Tar is set when the blob was tar-wrapped; TarPayloadOffset is where the payload starts.
	Tar              bool
	TarPayloadOffset int64
	// ZFile is the decompressor when the (unwrapped) blob was a ZFile, else nil.
	ZFile *zfile.Reader
}

// Chain names the wrappers outermost first, e.g. ["tar", "zfile"].
func (w Wrapping) Chain() []string {
	var c []string
	if w.Tar {
		c = append(c, "tar")
	}
	if w.ZFile != nil {
		c = append(c, "zfile")
	}
	return c
}

// IsDamagedTar reports whether head (a file's first 512 bytes) is a tar header, by
// its ustar magic, that fails its checksum. The reference would read such a blob
// as raw data; it is a damaged wrapper, not a raw file.
func IsDamagedTar(head []byte) bool {
	if len(head) < tarwrap.BlockSize || tarwrap.IsWrapped(head) {
		return false
	}
	if magic := string(head[257:263]); magic != "ustar\x00" && magic != "ustar " {
		return false
	}
	_, err := tar.NewReader(bytes.NewReader(head[:tarwrap.BlockSize])).Next()
	return errors.Is(err, tar.ErrHeader)
}

// Unwrap removes the tar and ZFile wrappers of the blob in r (size bytes) and returns
// the inner content: for a layer blob, the LSMT file. A ZFile's block checksums are
// always verified. name is used in error messages.
func Unwrap(r io.ReaderAt, size int64, name string) (io.ReaderAt, int64, Wrapping, error) {
	var w Wrapping
	payload, psize, ok, err := tarwrap.Open(r, size)
	if err != nil {
		return nil, 0, w, fmt.Errorf("%s: %w", name, err)
	}
	if ok {
		w.Tar = true
		w.TarPayloadOffset = size - psize
		if p, isP := payload.(interface{ Offset() int64 }); isP {
			w.TarPayloadOffset = p.Offset()
		}
		r, size = payload, psize
	}
	head := make([]byte, 512)
	n, err := r.ReadAt(head, 0)
	if n < len(head) && !(errors.Is(err, io.EOF) || err == nil) {
		return nil, 0, w, fmt.Errorf("%s: read first bytes: %w", name, err)
	}
	if zfile.IsZFile(head[:n]) {
		z, err := zfile.Open(r, size, zfile.WithName(name))
		if err != nil {
			return nil, 0, w, err
		}
		w.ZFile = z
		r, size = z, z.Size()
	}
	return r, size, w, nil
}

// Open opens the layer blob in r (size bytes). name is used in error messages.
func Open(r io.ReaderAt, size int64, name string) (*lsmt.Layer, Wrapping, error) {
	inner, isize, w, err := Unwrap(r, size, name)
	if err != nil {
		return nil, w, err
	}
	l, err := lsmt.OpenLayer(inner, isize)
	if err != nil {
		if c := w.Chain(); len(c) > 0 {
			return nil, w, fmt.Errorf("%s (inside %v): %w", name, c, err)
		}
		return nil, w, fmt.Errorf("%s: %w", name, err)
	}
	return l, w, nil
}

// File is a layer opened from a local file; Close releases the file.
type File struct {
	*lsmt.Layer
	Wrapping Wrapping
	f        *os.File
}

// OpenFile opens the layer blob at path.
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	l, w, err := Open(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{Layer: l, Wrapping: w, f: f}, nil
}

// Close closes the underlying file.
func (f *File) Close() error { return f.f.Close() }
