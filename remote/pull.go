package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/internal/atomicfile"
	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/registry"
	godigest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// PullOptions configure Pull.
type PullOptions struct {
	// Parallel is the number of chunks fetched at once, over all layers (default
	// 16; the cache bounds concurrent registry reads itself).
	Parallel int
	// ChunkSize is the unit of work (default 8 MiB).
	ChunkSize int
	// BlobsOnly fetches the layer blobs only: the resolved image (its device
	// config) is not kept, so attaching the reference still asks the registry
	// for the manifest, and only the blob reads are local.
	BlobsOnly bool
	// Progress, if set, is called (from several goroutines, serialised) as bytes
	// of the image become local: done of total.
	Progress func(done, total int64)
}

// PullResult describes a finished pull.
type PullResult struct {
	Ref     string // the reference as resolved
	Layers  int
	Bytes   int64 // the image's blob bytes
	Fetched int64 // bytes fetched from the registry by this pull (the rest was cached)
	Config  *config.ImageConfig
}

// Pull fetches every layer blob of ref whole into the cache (in parallel;
// resumable, since what the cache holds is not fetched again), verifies each
// blob's sha256 digest, and unless BlobsOnly records the resolved image, so
// that attaching ref works with the registry unreachable (see Config).
func (o *Opener) Pull(ctx context.Context, ref string, po PullOptions) (PullResult, error) {
	if po.Parallel <= 0 {
		po.Parallel = 16
	}
	if po.ChunkSize <= 0 {
		po.ChunkSize = 8 << 20
	}
	cfg, im, err := o.ImageConfig(ctx, ref)
	if err != nil {
		return PullResult{}, err
	}
	res := PullResult{Ref: im.Ref, Layers: len(cfg.Lowers), Config: cfg}
	type chunk struct {
		layer int
		off   int64
		n     int
	}
	blobs := make([]*cachedBlob, len(cfg.Lowers))
	defer func() {
		for _, b := range blobs {
			if b != nil {
				b.Close()
			}
		}
	}()
	before := o.cache.Stats().BytesFetched
	for i, l := range cfg.Lowers {
		if l.Size == 0 {
			return res, fmt.Errorf("layer %d (%s): the manifest gives no size", i, l.Digest)
		}
		u, err := cfg.BlobURL(l.Digest)
		if err != nil {
			return res, err
		}
		b, err := o.openBlob(ctx, u, l, true)
		if err != nil {
			return res, fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
		}
		blobs[i] = b
		res.Bytes += int64(l.Size)
	}
	var done atomic.Int64
	var pmu sync.Mutex
	progress := func(n int) {
		d := done.Add(int64(n))
		if po.Progress != nil {
			pmu.Lock()
			po.Progress(d, res.Bytes)
			pmu.Unlock()
		}
	}
	progress(0)
	g, gctx := errgroup.WithContext(ctx)
	// Each layer is hashed in order while later chunks are still being fetched,
	// read back from the cache as the fetched prefix grows, so verifying costs
	// no time after the last byte arrives.
	hashers := make([]*orderedHash, len(blobs))
	for i, b := range blobs {
		hashers[i] = newOrderedHash(b)
	}
	work := make(chan chunk)
	for w := 0; w < po.Parallel; w++ {
		g.Go(func() error {
			buf := make([]byte, po.ChunkSize)
			for c := range work {
				if _, err := blobs[c.layer].ReadAtIntent(gctx, blobio.Background, buf[:c.n], c.off); err != nil && !(errors.Is(err, io.EOF) && c.off+int64(c.n) == blobs[c.layer].Size()) {
					return fmt.Errorf("layer %d (%s) at %d: %w", c.layer, cfg.Lowers[c.layer].Digest, c.off, err)
				}
				hashers[c.layer].fetched(c.off, c.n)
				progress(c.n)
			}
			return nil
		})
	}
	// Chunks are produced as the workers take them: nothing is sized by the
	// layer sizes a manifest claims.
feed:
	for i, l := range cfg.Lowers {
		for off := int64(0); off < int64(l.Size); off += int64(po.ChunkSize) {
			select {
			case work <- chunk{i, off, int(min(int64(po.ChunkSize), int64(l.Size)-off))}:
			case <-gctx.Done():
				break feed
			}
		}
	}
	close(work)
	fetchErr := g.Wait()
	sums := make([]string, len(hashers))
	var herr error
	for i, h := range hashers {
		var err error
		sums[i], err = h.finish()
		if herr == nil && err != nil {
			herr = fmt.Errorf("layer %d (%s): read back: %w", i, cfg.Lowers[i].Digest, err)
		}
	}
	if fetchErr != nil {
		return res, fetchErr
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if herr != nil {
		return res, herr
	}
	res.Fetched = o.cache.Stats().BytesFetched - before
	for i, l := range cfg.Lowers {
		if want, err := godigest.Parse(l.Digest); err != nil || godigest.NewDigestFromEncoded(godigest.SHA256, sums[i]) != want {
			// Drop what was fetched: the next pull starts this blob over.
			blobs[i].Evict(0, blobs[i].Size())
			return res, fmt.Errorf("layer %d: %s: the fetched blob hashes to sha256:%s (digest mismatch)", i, l.Digest, sums[i])
		}
		if !o.cache.Complete(l.Digest, int64(l.Size)) {
			return res, fmt.Errorf("layer %d (%s) is not wholly cached after the pull: is the cache (cacheSizeGB) smaller than the image?", i, l.Digest)
		}
	}
	if !po.BlobsOnly {
		if err := o.savePulled(ref, cfg); err != nil {
			return res, err
		}
	}
	o.lg.Info("pulled", zap.String("ref", im.Ref), zap.Int("layers", res.Layers), zap.Int64("bytes", res.Bytes),
		zap.Int64("fetched", res.Fetched), zap.Bool("blobsOnly", po.BlobsOnly))
	return res, nil
}

// orderedHash hashes a blob from its start as chunks of it are fetched, in any
// order: a goroutine reads each newly contiguous range back (from the cache,
// locally) and hashes it.
type orderedHash struct {
	r    io.ReaderAt
	size int64
	in   chan [2]int64 // fetched ranges: off, n
	done chan struct{}
	sum  string
	err  error
}

func newOrderedHash(r interface {
	io.ReaderAt
	Size() int64
}) *orderedHash {
	h := &orderedHash{r: r, size: r.Size(), in: make(chan [2]int64, 64), done: make(chan struct{})}
	go h.run()
	return h
}

func (h *orderedHash) fetched(off int64, n int) { h.in <- [2]int64{off, int64(n)} }

func (h *orderedHash) run() {
	defer close(h.done)
	d := sha256.New()
	pending := map[int64]int64{}
	var next int64
	buf := make([]byte, 1<<20)
	for r := range h.in {
		pending[r[0]] = r[1]
		for h.err == nil {
			n, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			if _, err := io.CopyBuffer(d, io.NewSectionReader(h.r, next, n), buf); err != nil {
				h.err = err
			}
			next += n
		}
	}
	if h.err == nil && next != h.size {
		// Not all fetched: a failed or cancelled pull, which reports its own error.
		h.err = fmt.Errorf("only %d of %d bytes fetched", next, h.size)
	}
	h.sum = hex.EncodeToString(d.Sum(nil))
}

// finish waits for the hash of everything fetched and returns it.
func (h *orderedHash) finish() (string, error) {
	close(h.in)
	<-h.done
	return h.sum, h.err
}

// pulled is what Pull records about an image, under <cacheDir>/images/.
type pulled struct {
	Ref    string          `json:"ref"`
	Config json.RawMessage `json:"config"`
}

func (o *Opener) pulledPath(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return filepath.Join(o.dir, "images", hex.EncodeToString(sum[:12])+".json")
}

func (o *Opener) savePulled(ref string, cfg *config.ImageConfig) error {
	b, err := cfg.Encode()
	if err != nil {
		return err
	}
	doc, err := json.Marshal(pulled{Ref: ref, Config: b})
	if err != nil {
		return err
	}
	p := o.pulledPath(ref)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, doc, 0o600)
}

// loadPulled returns the config Pull recorded for ref.
func (o *Opener) loadPulled(ref string) (*config.ImageConfig, error) {
	b, err := os.ReadFile(o.pulledPath(ref))
	if err != nil {
		return nil, err
	}
	var doc pulled
	if err := json.Unmarshal(b, &doc); err != nil || doc.Ref != ref {
		return nil, fmt.Errorf("pulled image record for %s: unreadable or for another reference", ref)
	}
	return config.ParseImageConfig(doc.Config, "/")
}

// resolveOffline is Config's fallback when the registry cannot be reached: a
// pulled image attaches from its recorded config (its blobs are all cached).
func (o *Opener) resolveOffline(ref string, err error) (*config.ImageConfig, error) {
	if !errors.Is(err, registry.ErrUnavailable) {
		return nil, err
	}
	cfg, perr := o.loadPulled(ref)
	if perr != nil {
		return nil, err
	}
	o.lg.Warn("registry unreachable: using the pulled image", zap.String("ref", ref), zap.Error(err))
	return cfg, nil
}
