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
	"time"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/trace"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Blob is a layer blob opened for random reads.
type Blob interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// RemoteBlob is a remote layer blob, all of it: the remote opener's blobs and
// every wrapper this package puts around them (swapBlob, openLog) implement each
// method, so no capability is lost through a wrapper and none is found by type
// assertion (docs/ARCHITECTURE.md, "The remote read path").
type RemoteBlob interface {
	Blob          // ReadAt is a device read (blobio.Demand)
	blobio.Reader // ReadAtIntent: a read with an explicit intent (trace replay, download)
	// Evict drops [off, off+n) from the cache so that the next read fetches it
	// again (the ZFile reader's self-healing, zfile.Evicter); it returns
	// blobio.ErrNotEvictable when there is no cache.
	Evict(off, n int64) error
	// Direct is the remote side past the cache, which the background download
	// reads (as the reference reads registryfs) so that a full download does
	// not churn the extent cache.
	Direct() blobio.Reader
}

// RemoteOpener opens a remote layer blob by URL (config.ImageConfig.BlobURL of its
// digest). The remote-image code provides it; without one, remote layers fail to open.
type RemoteOpener interface {
	OpenBlob(ctx context.Context, url string, l config.Layer) (RemoteBlob, error)
}

// Options configure Open.
type Options struct {
	Remote RemoteOpener // nil: local layers only
	Logger *zap.Logger  // nil: zap.L()
	// Parallel bounds how many layers open at once (the reference: 32).
	Parallel int
	// PrefetchConcurrency is the number of trace replay workers (prefetchConfig.concurrency).
	PrefetchConcurrency int
	// RecordTrace and ReplayTrace are run-time trace files (`obd attach --record-trace /
	// --prefetch`), in addition to the config's recordTracePath and acceleration layer.
	RecordTrace, ReplayTrace string
	// DownloadLimiter paces every background download of the process (maxMBps
	// over all layers); nil: one per image, from its config.
	DownloadLimiter *download.Limiter
	// Download overrides the config's download timing (tests); Enable stays the config's.
	Download *download.Options
	// Holder is noted on the writable upper (e.g. "device 3") and shown to whoever
	// finds the upper locked by this image.
	Holder string
}

// Image is an assembled device: the stacked layers as a blockdev.Target.
type Image struct {
	*lsmt.Image
	blobs []io.Closer
	upper *lsmt.Writable
	once  sync.Once

	// Trace recording or replay in the background, stopped by Close.
	stopTrace func()
	traceDone chan struct{}

	download *download.Run // background download, nil if none
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
	lowers, accelTrace := cfg.StackLowers()
	plan, err := trace.Decide(trace.Sources{Record: opts.RecordTrace, Prefetch: opts.ReplayTrace,
		Acceleration: accelTrace, Configured: cfg.RecordTracePath})
	if err != nil {
		return nil, err
	}
	var rec *trace.Recorder
	var wrap func(int, io.ReaderAt) io.ReaderAt
	if plan.Recording() {
		rec = trace.NewRecorder(0)
		wrap = rec.Layer
	}
	if len(lowers) > lsmt.MaxLayers {
		return nil, fmt.Errorf("%d lower layers, at most %d can be stacked", len(lowers), lsmt.MaxLayers)
	}
	if cfg.Upper.Target != "" {
		return nil, errors.New("upper.target: TurboOCI writable layers are not supported yet")
	}
	im := &Image{}
	layers := make([]*lsmt.Layer, len(lowers))
	inners := make([]io.ReaderAt, len(lowers))
	blobs := make([]io.Closer, len(lowers))
	swaps := make([]*swapBlob, len(lowers))
	// Every layer is tried (no cancellation on the first error): the message names
	// each one that failed.
	errs := make([]error, len(lowers))
	var g errgroup.Group
	g.SetLimit(opts.Parallel)
	for i := range lowers {
		g.Go(func() error {
			layers[i], inners[i], blobs[i], swaps[i], errs[i] = openLower(ctx, cfg, i, lowers[i], opts.Remote, wrap, plan.Replaying(), lg)
			return nil
		})
	}
	g.Wait()
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
		if opts.Holder != "" {
			w.SetHolderNote(opts.Holder)
		}
		if d := w.Dropped(); d.Records > 0 {
			lg.Warn("upper: dropped index records whose data is past the end of the data file (writes after the last flush, cut by a power loss)",
				zap.String("data", cfg.Upper.Data), zap.String("index", cfg.Upper.Index), zap.Int64("records", d.Records),
				zap.Int64("first_at", d.FirstAt), zap.Stringer("first", d.First))
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
	if err := im.startTrace(lg, plan, rec, inners, opts.PrefetchConcurrency); err != nil {
		im.Close()
		return nil, err
	}
	if !plan.Recording() {
		im.startDownload(cfg, lowers, swaps, opts, lg)
	}
	lg.Info("image assembled", zap.Int("lowers", len(layers)), zap.Bool("writable", im.upper != nil), zap.Int64("size", st.Size()))
	return im, nil
}

// blob is a lower layer's blob before unwrapping.
type blob struct {
	r    io.ReaderAt
	size int64
	c    io.Closer
	name string
	swap *swapBlob // remote blobs: reads can move to a downloaded copy
}

// openLower finds layer i's blob (local candidates first, then the registry),
// unwraps it (tar, ZFile), lets wrap see the LSMT file (trace recording) and opens
// the LSMT layer. It also returns the unwrapped reader which trace replay reads:
// with replay, for a remote blob, a second unwrapping over ReplayReader, so that
// replay reads carry blobio.Background (prefetch priority, no read-ahead) and
// device reads keep theirs.
func openLower(ctx context.Context, cfg *config.ImageConfig, i int, l config.Layer, remote RemoteOpener,
	wrap func(int, io.ReaderAt) io.ReaderAt, replay bool, lg *zap.Logger) (*lsmt.Layer, io.ReaderAt, io.Closer, *swapBlob, error) {
	if l.TargetFile != "" || l.TargetDigest != "" {
		ll, inner, c, err := openTurboLower(ctx, cfg, i, l, remote)
		return ll, inner, c, nil, err
	}
	b, err := findBlob(ctx, cfg, i, l, remote)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var (
		inner io.ReaderAt
		isize int64
		w     layer.Wrapping
		ll    *lsmt.Layer
	)
	for try := 1; ; try++ {
		r := b.r
		var log *openLog
		if b.swap != nil {
			log = &openLog{swapBlob: b.swap}
			r = log
		}
		inner, isize, w, err = layer.Unwrap(r, b.size, b.name)
		if err == nil && wrap != nil {
			inner = wrap(i, inner)
		}
		if err == nil {
			inner = &labelledReader{r: inner, layer: i, digest: l.Digest, name: b.name}
		}
		if err == nil {
			ll, err = lsmt.OpenLayer(inner, isize)
		}
		if err == nil || log == nil || try >= maxOpenTries || !healable(err) {
			if log != nil {
				log.stop()
			}
			break
		}
		// Metadata fetched from a registry or a peer failed its checks: drop what
		// this open read from the cache and open again from fresh bytes.
		n, eerr := log.evictRead()
		log.stop()
		if eerr != nil {
			lg.Warn("layer metadata corrupt, cannot evict it for a retry", zap.Int("layer", i), zap.String("blob", b.name), zap.Error(err), zap.NamedError("evict", eerr))
			break
		}
		lg.Warn("layer metadata corrupt, refetching it", zap.Int("layer", i), zap.String("blob", b.name), zap.Int("try", try), zap.Int64("evictedBytes", n), zap.Error(err))
	}
	if err != nil {
		// A blob that exists but does not open is corrupt: never fall back
		// silently to another copy.
		b.c.Close()
		return nil, nil, nil, nil, fmt.Errorf("failed to open layer %d: %s: %w", i, b.name, err)
	}
	lg.Debug("opened layer", zap.Int("layer", i), zap.String("blob", b.name), zap.Strings("chain", w.Chain()))
	if replay && b.swap != nil {
		if r, _, _, err := layer.Unwrap(ReplayReader(b.swap), b.size, b.name); err == nil {
			inner = r
		} else {
			lg.Warn("trace replay of this layer at on-demand priority", zap.Int("layer", i), zap.Error(err))
		}
	}
	return ll, inner, b.c, b.swap, nil
}

func findBlob(ctx context.Context, cfg *config.ImageConfig, i int, l config.Layer, remote RemoteOpener) (blob, error) {
	var localErr error
	for _, p := range l.LocalCandidates() {
		f, err := os.Open(p)
		if err == nil {
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return blob{}, fmt.Errorf("failed to open layer %d: %w", i, err)
			}
			return blob{r: f, size: st.Size(), c: f, name: p}, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return blob{}, fmt.Errorf("failed to open layer %d: %w", i, err)
		}
		localErr = err
	}
	if l.Digest == "" {
		if localErr != nil {
			return blob{}, fmt.Errorf("failed to open layer %d: %w", i, localErr)
		}
		return blob{}, fmt.Errorf("failed to open layer %d: no file, dir or digest", i)
	}
	if remote == nil {
		return blob{}, fmt.Errorf("failed to open layer %d: %s is remote and this build has no registry access", i, l.Digest)
	}
	url, err := cfg.BlobURL(l.Digest)
	if err != nil {
		return blob{}, fmt.Errorf("failed to open layer %d: %w", i, err)
	}
	b, err := remote.OpenBlob(ctx, url, l)
	if err != nil {
		return blob{}, fmt.Errorf("failed to open remote file %s: %w", url, err)
	}
	s := newSwapBlob(b)
	return blob{r: s, size: s.Size(), c: s, name: url, swap: s}, nil
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

// startTrace runs the plan's trace job in the background: recording reads (dumped
// when the .lock file is deleted or the image closes) or replaying a trace or file
// list to warm caches. Close stops it.
func (im *Image) startTrace(lg *zap.Logger, plan trace.Plan, rec *trace.Recorder, layers []io.ReaderAt, workers int) error {
	var job func(ctx context.Context)
	var err error
	switch plan.Mode {
	case trace.ModeRecord:
		job, err = startRecording(lg, plan.Path, rec)
	case trace.ModeReplayFileList:
		job, err = im.fileListReplay(lg, plan.Path, workers)
	case trace.ModeReplayTrace:
		job, err = traceReplay(lg, plan.Path, layers, workers)
	}
	if err != nil || job == nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		job(ctx)
	}()
	im.stopTrace, im.traceDone = cancel, done
	return nil
}

func startRecording(lg *zap.Logger, path string, rec *trace.Recorder) (func(context.Context), error) {
	r, err := trace.StartRecording(path, rec)
	if err != nil {
		return nil, fmt.Errorf("record trace %s: %w", path, err)
	}
	return func(ctx context.Context) {
		if err := r.Wait(ctx, 0); err != nil && !errors.Is(err, context.Canceled) {
			lg.Warn("trace recording", zap.String("path", path), zap.Error(err))
		}
		lg.Info("trace recorded", zap.String("path", path), zap.Int("records", rec.Len()))
	}, nil
}

func (im *Image) fileListReplay(lg *zap.Logger, path string, workers int) (func(context.Context), error) {
	fl, err := trace.ReadFileListFile(path)
	if err != nil {
		return nil, fmt.Errorf("prefetch file list: %w", err)
	}
	for _, s := range fl.Skipped {
		lg.Debug("file-list prefetch: line skipped", zap.String("path", path), zap.Int("line", s.Line), zap.String("reason", s.Reason))
	}
	return func(ctx context.Context) {
		start := time.Now()
		st, err := replayFileList(ctx, lg, im.Image, fl, workers)
		if errors.Is(err, errErofs) {
			lg.Warn("file-list prefetch skipped: the image is erofs, not supported yet", zap.String("path", path))
			return
		}
		lg.Info("file list replayed", zap.String("path", path), zap.Int("entries", len(fl.Entries)),
			zap.Int("files", st.Files), zap.Int("missing", st.Missing), zap.Int64("bytes", st.Bytes),
			zap.Int("reads", st.Reads), zap.Int("errors", st.Errors), zap.Duration("mapping", st.Mapped),
			zap.Duration("took", time.Since(start)), zap.Error(err))
	}, nil
}

func traceReplay(lg *zap.Logger, path string, layers []io.ReaderAt, workers int) (func(context.Context), error) {
	recs, err := trace.ReadTraceFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // gone since the plan was made: nothing to do
	}
	if err != nil {
		return nil, fmt.Errorf("prefetch trace %s: %w", path, err)
	}
	return func(ctx context.Context) {
		st, err := trace.Replay(ctx, recs, layers, workers)
		lg.Info("trace replayed", zap.String("path", path), zap.Int("records", st.Records),
			zap.Int64("bytes", st.Bytes), zap.Int("errors", st.Errors), zap.Duration("took", st.Duration), zap.Error(err))
	}, nil
}

// TraceDone is closed when trace recording or replay has finished (nil without one).
func (im *Image) TraceDone() <-chan struct{} { return im.traceDone }

// Close stops trace work (a recording is dumped), syncs and closes the writable
// layer, then releases the layer blobs.
func (im *Image) Close() error {
	var err error
	im.once.Do(func() {
		if im.download != nil {
			im.download.Stop()
		}
		if im.stopTrace != nil {
			im.stopTrace()
			<-im.traceDone
		}
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
