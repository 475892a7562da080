package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// ReplayReader is b as trace replay reads it: in the background (blobio.Background:
// in Dragonfly mode below on-demand reads, and no read-ahead beyond what the trace
// names). It keeps b's Evict, for the ZFile self-healing of the replay's reads.
func ReplayReader(b RemoteBlob) blobio.View { return blobio.View{R: b, In: blobio.Background} }

// swapBlob is a remote layer blob whose reads move to a verified local copy once
// the background download has it. The copy holds the same bytes, so the layers
// unwrapped above it (tar, ZFile, LSMT) never notice the switch.
type swapBlob struct {
	remote RemoteBlob
	size   int64
	cur    atomic.Pointer[io.ReaderAt]

	mu    sync.Mutex
	local *os.File
}

var _ RemoteBlob = (*swapBlob)(nil)

func newSwapBlob(b RemoteBlob) *swapBlob {
	s := &swapBlob{remote: b, size: b.Size()}
	var r io.ReaderAt = b
	s.cur.Store(&r)
	return s
}

func (s *swapBlob) Size() int64 { return s.size }

func (s *swapBlob) ReadAt(p []byte, off int64) (int, error) { return (*s.cur.Load()).ReadAt(p, off) }

// ReadAtIntent reads the remote blob with in, or the local copy once there is one.
func (s *swapBlob) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	if s.Local() {
		return s.ReadAt(p, off)
	}
	return s.remote.ReadAtIntent(ctx, in, p, off)
}

// Direct is the remote blob's remote side, also after the swap.
func (s *swapBlob) Direct() blobio.Reader { return s.remote.Direct() }

// Evict forwards a ZFile CRC failure to the cache. Once reads have moved to the
// verified local copy (the bad bytes may have come from the remote side just
// before the swap), the remote side is still told, so that the cache drops them,
// and nil lets the reader re-read from the local copy.
func (s *swapBlob) Evict(off, n int64) error {
	local := s.Local()
	if err := s.remote.Evict(off, n); err != nil && !local {
		return err
	}
	return nil
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
		s := s
		jobs = append(jobs, download.Job{Dir: lowers[i].Dir, Digest: lowers[i].Digest, Size: s.size, Source: s.remote.Direct(), Done: s.switchTo})
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
