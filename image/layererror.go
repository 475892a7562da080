package image

import (
	"fmt"
	"io"
	"os"
)

// LayerError is a failed read of a lower layer, labelled so that the device's
// error log can name the layer.
type LayerError struct {
	Layer  int    // index in lowers (0 = bottom)
	Digest string // lowers[].digest, may be empty for a local file
	Name   string // the blob read: local path or registry URL
	Off    int64  // offset in the unwrapped layer (LSMT file)
	Err    error
}

func (e *LayerError) Error() string {
	return fmt.Sprintf("layer %d (%s) offset %d: %v", e.Layer, e.Name, e.Off, e.Err)
}

func (e *LayerError) Unwrap() error { return e.Err }

// labelledReader wraps a layer's read errors in a LayerError. io.EOF passes
// unchanged: readers above compare it directly.
type labelledReader struct {
	r      io.ReaderAt
	layer  int
	digest string
	name   string
}

// LocalFile implements lsmt.LocalFiler: labelling changes no bytes, so a
// frontend may read a plain local layer file directly (blockdev.FileMapper).
func (l *labelledReader) LocalFile() *os.File {
	f, _ := l.r.(*os.File)
	return f
}

func (l *labelledReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := l.r.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = &LayerError{Layer: l.layer, Digest: l.digest, Name: l.name, Off: off, Err: err}
	}
	return n, err
}
