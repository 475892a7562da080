package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/zfile"
	"go.uber.org/zap"
)

// SourceBlob is an optional capability of a remote Blob: the raw remote side,
// which the background download reads (as the reference does) so a full download
// does not churn the extent cache.
type SourceBlob interface {
	Source() io.ReaderAt
}

// PrefetchBlob is an optional capability of a remote Blob: a view of it whose reads
// are marked as prefetch (in Dragonfly mode, sent below on-demand reads). Trace
// replay reads through it.
type PrefetchBlob interface {
	PrefetchReader() io.ReaderAt
}

// prefetchView is a swapBlob read at prefetch priority while it is remote.
type prefetchView struct {
	s      *swapBlob
	remote io.ReaderAt
}

// prefetchView returns nil unless s is remote with a prefetch view (s may be nil).
func (s *swapBlob) prefetchView() io.ReaderAt {
	if s == nil {
		return nil
	}
	pb, ok := s.remote.(PrefetchBlob)
	if !ok {
		return nil
	}
	return prefetchView{s, pb.PrefetchReader()}
}

func (v prefetchView) ReadAt(p []byte, off int64) (int, error) {
	if v.s.Local() {
		return v.s.ReadAt(p, off)
	}
	return v.remote.ReadAt(p, off)
}

// Evict keeps the ZFile self-healing of the replay's reads.
func (v prefetchView) Evict(off, n int64) error { return v.s.Evict(off, n) }

// swapBlob is a remote layer blob whose reads move to a verified local copy once
// the background download has it. The copy holds the same bytes, so the layers
// unwrapped above it (tar, ZFile, LSMT) never notice the switch.
type swapBlob struct {
	remote Blob
	size   int64
	cur    atomic.Pointer[io.ReaderAt]

	mu    sync.Mutex
	local *os.File
}

func newSwapBlob(b Blob) *swapBlob {
	s := &swapBlob{remote: b, size: b.Size()}
	var r io.ReaderAt = b
	s.cur.Store(&r)
	return s
}

func (s *swapBlob) Size() int64 { return s.size }

func (s *swapBlob) ReadAt(p []byte, off int64) (int, error) { return (*s.cur.Load()).ReadAt(p, off) }

// Evict forwards a ZFile CRC failure to the cache. Once reads have moved to the
// verified local copy (the bad bytes may have come from the remote side just
// before the swap), the remote side is still told, so that the cache drops them,
// and nil lets the reader re-read from the local copy.
func (s *swapBlob) Evict(off, n int64) error {
	local := s.Local()
	if ev, ok := s.remote.(zfile.Evicter); ok {
		if err := ev.Evict(off, n); err != nil && !local {
			return err
		}
		return nil
	}
	if local {
		return nil
	}
	return errors.New("remote blob cannot evict: a re-read would return the same bytes")
}

// switchTo moves reads to the file at path, which must have the blob's size.
func (s *swapBlob) switchTo(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil || st.Size() != s.size {
		f.Close()
		return fmt.Errorf("local copy %s: size %d, want %d (%v)", path, st.Size(), s.size, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.local != nil {
		f.Close()
		return nil
	}
	s.local = f
	var r io.ReaderAt = f
	s.cur.Store(&r)
	return nil
}

// Local reports whether reads go to a local copy.
func (s *swapBlob) Local() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.local != nil
}

// Close releases both sides; the remote one stays open until then because reads
// may still be in flight on it after the switch.
func (s *swapBlob) Close() error {
	err := s.remote.Close()
	s.mu.Lock()
	if s.local != nil {
		s.local.Close()
	}
	s.mu.Unlock()
	return err
}

// startDownload starts the background download of the remote layers that have a
// Dir (docs/overlaybd-format.md §10). Not while recording a trace: the reference
// disables it then, since reads served locally would leave the trace describing a
// warm start.
func (im *Image) startDownload(cfg *config.ImageConfig, lowers []config.Layer, swaps []*swapBlob, opts Options, lg *zap.Logger) {
	if !cfg.Download.Enable {
		return
	}
	var jobs []download.Job
	for i, s := range swaps {
		if s == nil || lowers[i].Dir == "" {
			continue
		}
		var src io.ReaderAt = s.remote
		if sb, ok := s.remote.(SourceBlob); ok {
			src = sb.Source()
		}
		s := s
		jobs = append(jobs, download.Job{Dir: lowers[i].Dir, Digest: lowers[i].Digest, Size: s.size, Source: src, Done: s.switchTo})
	}
	if len(jobs) == 0 {
		return
	}
	do := download.OptionsFromConfig(cfg.Download)
	do.Limiter = opts.DownloadLimiter
	if opts.Download != nil {
		do = *opts.Download
	}
	do.Logger = lg
	if do.Limiter == nil {
		do.Limiter = download.NewLimiter(float64(cfg.Download.MaxMBps) * (1 << 20))
	}
	im.download = download.Start(context.Background(), jobs, do)
}

// Downloads reports the background download of each remote layer with a Dir
// (nil when none runs).
func (im *Image) Downloads() []download.Status {
	if im.download == nil {
		return nil
	}
	return im.download.Status()
}

// DownloadDone is closed when the background download has ended (nil without one).
func (im *Image) DownloadDone() <-chan struct{} {
	if im.download == nil {
		return nil
	}
	return im.download.Done()
}
