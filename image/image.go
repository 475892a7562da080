// Package image assembles a device config (config.v1.json) into a blockdev.Target:
// each lower layer blob is found (a local file, or a remote blob through a
// RemoteOpener), unwrapped (tar, ZFile) and stacked with the optional writable upper.
package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"go.uber.org/zap"
)

// Blob is a layer blob opened for random reads.
type Blob interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// RemoteOpener opens a remote layer blob by URL (config.ImageConfig.BlobURL of its
// digest). The remote-image code provides it; without one, remote layers fail to open.
type RemoteOpener interface {
	OpenBlob(ctx context.Context, url string, l config.Layer) (Blob, error)
}

// Options configure Open.
type Options struct {
	Remote RemoteOpener // nil: local layers only
	Logger *zap.Logger  // nil: zap.L()
	// Parallel bounds how many layers open at once (the reference: 32).
	Parallel int
}

// Image is an assembled device: the stacked layers as a blockdev.Target.
type Image struct {
	*lsmt.Image
	blobs []io.Closer
	upper *lsmt.Writable
	once  sync.Once
}

var (
	_ blockdev.Target     = (*Image)(nil)
	_ blockdev.Discarder  = (*Image)(nil)
	_ blockdev.ReadOnlyer = (*Image)(nil)
)

// Open assembles cfg. Errors name the layer (as the reference's result file does:
// "failed to open layer 2: ...").
func Open(ctx context.Context, cfg *config.ImageConfig, opts Options) (*Image, error) {
	lg := opts.Logger
	if lg == nil {
		lg = zap.L()
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 32
	}
	lowers := cfg.Lowers
	if cfg.AccelerationLayer && len(lowers) > 0 {
		// The last lower only carries a prefetch trace: it leaves the stack.
		lowers = lowers[:len(lowers)-1]
	}
	if len(lowers) > lsmt.MaxLayers {
		return nil, fmt.Errorf("%d lower layers, at most %d can be stacked", len(lowers), lsmt.MaxLayers)
	}
	if cfg.Upper.Target != "" {
		return nil, errors.New("upper.target: TurboOCI writable layers are not supported yet")
	}
	im := &Image{}
	layers := make([]*lsmt.Layer, len(lowers))
	blobs := make([]io.Closer, len(lowers))
	errs := make([]error, len(lowers))
	sem := make(chan struct{}, opts.Parallel)
	var wg sync.WaitGroup
	for i := range lowers {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			layers[i], blobs[i], errs[i] = openLower(ctx, cfg, i, lowers[i], opts.Remote, lg)
		}(i)
	}
	wg.Wait()
	for _, b := range blobs {
		if b != nil {
			im.blobs = append(im.blobs, b)
		}
	}
	if err := errors.Join(errs...); err != nil {
		im.closeBlobs()
		return nil, err
	}
	if !cfg.ReadOnly() {
		w, err := OpenWritable(cfg.Upper.Data, cfg.Upper.Index)
		if err != nil {
			im.closeBlobs()
			return nil, err
		}
		im.upper = w
	}
	st, err := lsmt.NewImage(layers, im.upper)
	if err != nil {
		im.Close()
		return nil, err
	}
	if st.Size() <= 0 {
		im.Close()
		return nil, errors.New("image has no virtual size: no layer records one")
	}
	im.Image = st
	lg.Info("image assembled", zap.Int("lowers", len(layers)), zap.Bool("writable", im.upper != nil), zap.Int64("size", st.Size()))
	return im, nil
}

func openLower(ctx context.Context, cfg *config.ImageConfig, i int, l config.Layer, remote RemoteOpener, lg *zap.Logger) (*lsmt.Layer, io.Closer, error) {
	if l.TargetFile != "" || l.TargetDigest != "" {
		return nil, nil, fmt.Errorf("failed to open layer %d: TurboOCI layers (targetFile/targetDigest) are not supported yet", i)
	}
	var localErr error
	for _, p := range l.LocalCandidates() {
		f, err := layer.OpenFile(p)
		if err == nil {
			lg.Debug("opened local layer", zap.Int("layer", i), zap.String("path", p), zap.Strings("chain", f.Wrapping.Chain()))
			return f.Layer, f, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			// A local file that exists but does not open is corrupt: never fall back
			// silently to something else.
			return nil, nil, fmt.Errorf("failed to open layer %d: %w", i, err)
		}
		localErr = err
	}
	if l.Digest == "" {
		if localErr != nil {
			return nil, nil, fmt.Errorf("failed to open layer %d: %w", i, localErr)
		}
		return nil, nil, fmt.Errorf("failed to open layer %d: no file, dir or digest", i)
	}
	if remote == nil {
		return nil, nil, fmt.Errorf("failed to open layer %d: %s is remote and this build has no registry access", i, l.Digest)
	}
	url, err := cfg.BlobURL(l.Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to open layer %d: %w", i, err)
	}
	b, err := remote.OpenBlob(ctx, url, l)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to open remote file %s: %w", url, err)
	}
	ll, _, err := layer.Open(b, b.Size(), url)
	if err != nil {
		b.Close()
		return nil, nil, fmt.Errorf("failed to open layer %d: %w", i, err)
	}
	return ll, b, nil
}

// OpenWritable opens a writable layer read-write: dataPath, and indexPath unless the
// data file is a sparse layer (which has no index file).
func OpenWritable(dataPath, indexPath string) (*lsmt.Writable, error) {
	data, err := os.OpenFile(dataPath, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("upper data: %w", err)
	}
	var index *os.File
	if !IsSparse(data) {
		if indexPath == "" {
			data.Close()
			return nil, fmt.Errorf("upper data %s is not sparse: an index file is required", dataPath)
		}
		if index, err = os.OpenFile(indexPath, os.O_RDWR, 0); err != nil {
			data.Close()
			return nil, fmt.Errorf("upper index: %w", err)
		}
	}
	w, err := lsmt.OpenWritable(data, index)
	if err != nil {
		data.Close()
		if index != nil {
			index.Close()
		}
		return nil, fmt.Errorf("upper: %w", err)
	}
	return w, nil
}

// IsSparse reports whether f starts with the header of a sparse writable layer.
func IsSparse(f *os.File) bool {
	b := make([]byte, lsmt.HeaderSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		return false
	}
	var h lsmt.HeaderTrailer
	return h.UnmarshalBinary(b) == nil && h.IsHeader() && h.IsDataFile() && h.IsSparse()
}

// Close syncs and closes the writable layer, then releases the layer blobs.
func (im *Image) Close() error {
	var err error
	im.once.Do(func() {
		if im.upper != nil {
			err = im.upper.Close()
		}
		im.closeBlobs()
	})
	return err
}

func (im *Image) closeBlobs() {
	for _, b := range im.blobs {
		b.Close()
	}
	im.blobs = nil
}
