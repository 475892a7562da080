package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/gzindex"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
)

// openTurboLower opens a TurboOCI lower (docs/overlaybd-format.md §12): the warp
// layer in file (the file system's metadata, its file data mapped onto the original
// layer) over the original OCI layer, targetFile or targetDigest from the registry,
// read through gzipIndex when that layer is gzip. It returns the layer, the warp
// file (what trace recording sees) and what to close.
func openTurboLower(ctx context.Context, cfg *config.ImageConfig, i int, l config.Layer, remote RemoteOpener) (_ *lsmt.Layer, _ io.ReaderAt, _ io.Closer, err error) {
	var closers closeAll
	defer func() {
		if err != nil {
			closers.Close()
		}
	}()
	if l.File == "" {
		return nil, nil, nil, fmt.Errorf("failed to open layer %d: a TurboOCI layer (targetFile/targetDigest) needs file, its fs meta", i)
	}
	meta, msize, err := closers.open(l.File)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("failed to open layer %d: %w", i, err)
	}
	inner, isize, _, err := layer.Unwrap(meta, msize, l.File)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("failed to open layer %d: %w", i, err)
	}

	var target io.ReaderAt
	var tsize int64
	var tname string
	switch {
	case l.TargetFile != "":
		f, size, err := closers.open(l.TargetFile)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("failed to open layer %d: target: %w", i, err)
		}
		target, tsize, tname = f, size, l.TargetFile
	default:
		if remote == nil {
			return nil, nil, nil, fmt.Errorf("failed to open layer %d: target %s is remote and this build has no registry access", i, l.TargetDigest)
		}
		url, err := cfg.BlobURL(l.TargetDigest)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("failed to open layer %d: target: %w", i, err)
		}
		b, err := remote.OpenBlob(ctx, url, config.Layer{Digest: l.TargetDigest})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("failed to open remote file %s (layer %d's target): %w", url, i, err)
		}
		closers = append(closers, b)
		target, tsize, tname = b, b.Size(), url
	}
	if l.GzipIndex != "" {
		idx, isz, err := closers.open(l.GzipIndex)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("failed to open layer %d: gzipIndex: %w", i, err)
		}
		gz, err := gzindex.Open(target, tsize, idx, isz, l.GzipIndex)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("failed to open layer %d: target %s: %w", i, tname, err)
		}
		target = gz
	}
	ll, err := lsmt.OpenWarpLayer(inner, isize, target)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("failed to open layer %d: %s: %w", i, l.File, err)
	}
	return ll, inner, closers, nil
}

// closeAll closes each of its closers.
type closeAll []io.Closer

// open opens the file at path for reading, to be closed with the rest, and
// returns its size.
func (c *closeAll) open(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	*c = append(*c, f)
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	return f, st.Size(), nil
}

func (c closeAll) Close() error {
	var errs []error
	for _, x := range c {
		errs = append(errs, x.Close())
	}
	return errors.Join(errs...)
}
