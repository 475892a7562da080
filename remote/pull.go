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
	"strings"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/registry"
	"go.uber.org/zap"
)

// PullOptions configure Pull.
type PullOptions struct {
	// Parallel is the number of chunks fetched at once, over all layers (default 8).
	Parallel int
	// ChunkSize is the unit of work (default 16 MiB).
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
		po.Parallel = 8
	}
	if po.ChunkSize <= 0 {
		po.ChunkSize = 16 << 20
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
	var chunks []chunk
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
		b, err := o.OpenBlob(ctx, u, l)
		if err != nil {
			return res, fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
		}
		blobs[i] = b.(*cachedBlob)
		res.Bytes += int64(l.Size)
		for off := int64(0); off < int64(l.Size); off += int64(po.ChunkSize) {
			chunks = append(chunks, chunk{i, off, int(min(int64(po.ChunkSize), int64(l.Size)-off))})
		}
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan chunk)
	var firstErr error
	var emu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < po.Parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, po.ChunkSize)
			for c := range work {
				if _, err := blobs[c.layer].ReadAt(buf[:c.n], c.off); err != nil && !(errors.Is(err, io.EOF) && c.off+int64(c.n) == blobs[c.layer].Size()) {
					emu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("layer %d (%s) at %d: %w", c.layer, cfg.Lowers[c.layer].Digest, c.off, err)
					}
					emu.Unlock()
					cancel()
					continue
				}
				progress(c.n)
			}
		}()
	}
feed:
	for _, c := range chunks {
		select {
		case work <- c:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.Fetched = o.cache.Stats().BytesFetched - before
	for i, l := range cfg.Lowers {
		if err := verifyDigest(blobs[i], l.Digest); err != nil {
			// Drop what was fetched: the next pull starts this blob over.
			blobs[i].Evict(0, blobs[i].Size())
			return res, fmt.Errorf("layer %d: %w", i, err)
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

// verifyDigest hashes the blob (from the cache) and compares it with digest.
func verifyDigest(r interface {
	io.ReaderAt
	Size() int64
}, digest string) error {
	want, ok := strings.CutPrefix(digest, "sha256:")
	if !ok {
		return fmt.Errorf("%s: only sha256 digests can be verified", digest)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, r.Size())); err != nil {
		return fmt.Errorf("%s: read back: %w", digest, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%s: the fetched blob hashes to sha256:%s (digest mismatch)", digest, got)
	}
	return nil
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
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, doc, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
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
