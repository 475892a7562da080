// Package download fetches whole remote layer blobs into their layer directories
// in the background (the reference's download.enable, docs/overlaybd-format.md §10): after a
// delay, chunk by chunk (in parallel, rate-limited over all downloads, resumable
// through the holes of a sparse ".download" file), then verifies the sha256
// digest and renames the file to "overlaybd.commit". Callers switch a layer's
// reads to the local copy when its download is done.
package download

import (
	"context"
	_ "crypto/sha256" // registers the hash go-digest verifies with
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/internal/atomicfile"
	"github.com/obd-project/obd/internal/blobio"
	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Options configure downloads.
type Options struct {
	// Delay plus a random part of DelayExtra is waited before the first layer.
	Delay, DelayExtra time.Duration
	// Tries is the number of attempts per layer (tryCnt, default 5).
	Tries int
	// BlockSize is the unit of fetching and of resuming (default 256 KiB).
	BlockSize int
	// Parallel is the number of chunks fetched at once per layer (default 4).
	Parallel int
	// Limiter paces every download sharing it (nil: unlimited).
	Limiter *Limiter
	// Gap separates two layers' downloads (the reference: 200 ms).
	Gap    time.Duration
	Logger *zap.Logger
}

// OptionsFromConfig maps a config's download object to Options (seconds, MiB/s;
// delayExtra <= 0 means 30 s, as in the reference). The limiter is the caller's:
// it must be shared by all downloads of a daemon.
func OptionsFromConfig(d config.Download) Options {
	extra := d.DelayExtra
	if extra <= 0 {
		extra = 30
	}
	return Options{Delay: time.Duration(d.Delay) * time.Second, DelayExtra: time.Duration(extra) * time.Second,
		Tries: d.TryCnt, BlockSize: int(d.BlockSize), Gap: 200 * time.Millisecond}
}

func (o Options) normalized() Options {
	if o.Tries <= 0 {
		o.Tries = 5
	}
	if o.BlockSize <= 0 {
		o.BlockSize = 256 << 10
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.Logger == nil {
		o.Logger = zap.L()
	}
	return o
}

// Job is one layer to download.
type Job struct {
	Dir    string // layer directory: receives .download, then overlaybd.commit
	Digest string // "sha256:<hex>": the downloaded bytes must hash to it
	Size   int64  // blob size
	// Source is the remote blob (the reference reads the registry, not the cache),
	// read with ReadIntent. Its reads get a context that ends when the run stops;
	// a read that does not return then is abandoned (its buffer is dropped).
	Source blobio.Reader
	// Done is called with the local copy's path once it is verified, to switch the
	// layer's reads to it; an error fails the attempt.
	Done func(path string) error
}

// State is where a layer's download stands.
type State string

const (
	StateWaiting     State = "waiting"
	StateDownloading State = "downloading"
	StateDone        State = "done"
	StateFailed      State = "failed"
	StateStopped     State = "stopped"
)

// Status is a layer's download progress, as `obd list` shows it.
type Status struct {
	Digest   string `json:"digest"`
	State    State  `json:"state"`
	Bytes    int64  `json:"bytes"`    // bytes present in the local copy
	Fetched  int64  `json:"fetched"`  // bytes read from the source by this process
	Size     int64  `json:"size"`     // blob size
	Attempts int    `json:"attempts"` // attempts started
	Error    string `json:"error,omitempty"`
}

// ErrDigest is the error of a download whose bytes do not match the digest.
var ErrDigest = errors.New("digest mismatch")

// Run downloads jobs one after the other in the background.
type Run struct {
	jobs   []Job
	opts   Options
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	status []Status
	bytes  []atomic.Int64 // live progress of the current attempt
	fetch  []atomic.Int64
}

// Start begins the downloads after the configured delay; Stop or ctx ends them.
func Start(ctx context.Context, jobs []Job, opts Options) *Run {
	opts = opts.normalized()
	ctx, cancel := context.WithCancel(ctx)
	r := &Run{jobs: jobs, opts: opts, cancel: cancel, done: make(chan struct{}),
		status: make([]Status, len(jobs)), bytes: make([]atomic.Int64, len(jobs)), fetch: make([]atomic.Int64, len(jobs))}
	for i, j := range jobs {
		r.status[i] = Status{Digest: j.Digest, State: StateWaiting, Size: j.Size}
	}
	go r.run(ctx)
	return r
}

// Done is closed when every job has finished, failed or been stopped.
func (r *Run) Done() <-chan struct{} { return r.done }

// Stop cancels the downloads and waits for them.
func (r *Run) Stop() {
	r.cancel()
	<-r.done
}

// Status reports every job, in order.
func (r *Run) Status() []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Status, len(r.status))
	copy(out, r.status)
	for i := range out {
		if out[i].State == StateDownloading {
			out[i].Bytes = r.bytes[i].Load()
		}
		out[i].Fetched = r.fetch[i].Load()
	}
	return out
}

func (r *Run) set(i int, fn func(*Status)) {
	r.mu.Lock()
	fn(&r.status[i])
	r.mu.Unlock()
}

func (r *Run) run(ctx context.Context) {
	defer close(r.done)
	lg := r.opts.Logger
	wait := r.opts.Delay
	if r.opts.DelayExtra > 0 {
		wait += rand.N(r.opts.DelayExtra)
	}
	if !sleep(ctx, wait) {
		r.stopAll(0)
		return
	}
	for i, j := range r.jobs {
		if i > 0 && !sleep(ctx, r.opts.Gap) {
			r.stopAll(i)
			return
		}
		force := false
		var err error
		for try := 1; try <= r.opts.Tries; try++ {
			r.set(i, func(s *Status) { s.State, s.Attempts = StateDownloading, try })
			var path string
			path, err = fetch(ctx, j, r.opts, force, &r.bytes[i], &r.fetch[i])
			if err == nil && j.Done != nil {
				err = j.Done(path)
			}
			if err == nil {
				r.set(i, func(s *Status) { s.State, s.Bytes, s.Error = StateDone, j.Size, "" })
				lg.Info("layer downloaded", zap.String("digest", j.Digest), zap.String("path", path), zap.Int("attempt", try))
				break
			}
			if ctx.Err() != nil {
				break
			}
			force = errors.Is(err, ErrDigest)
			lg.Warn("layer download failed", zap.String("digest", j.Digest), zap.Int("attempt", try), zap.Int("tries", r.opts.Tries), zap.Error(err))
			if try < r.opts.Tries && !sleep(ctx, r.opts.Gap) {
				break
			}
		}
		if err != nil {
			state := StateFailed
			if ctx.Err() != nil {
				state = StateStopped
			}
			msg := err.Error()
			r.set(i, func(s *Status) { s.State, s.Error, s.Bytes = state, msg, r.bytes[i].Load() })
		}
		if ctx.Err() != nil {
			r.stopAll(i + 1)
			return
		}
	}
}

func (r *Run) stopAll(from int) {
	for i := from; i < len(r.jobs); i++ {
		r.set(i, func(s *Status) { s.State = StateStopped })
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Fetch downloads one job now (no delay, one attempt) and returns the verified
// local copy's path. force discards any partial .download first.
func Fetch(ctx context.Context, j Job, opts Options, force bool) (string, error) {
	var have, fetched atomic.Int64
	return fetch(ctx, j, opts.normalized(), force, &have, &fetched)
}

func fetch(ctx context.Context, j Job, o Options, force bool, have, fetched *atomic.Int64) (string, error) {
	final := filepath.Join(j.Dir, config.CommitFileName)
	if _, err := os.Stat(final); err == nil {
		have.Store(j.Size)
		return final, nil // present already (another device downloaded it, or a commit)
	}
	want, err := digest.Parse(j.Digest)
	if err != nil || want.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("download %s: only sha256 digests can be verified", j.Digest)
	}
	if j.Size <= 0 {
		return "", fmt.Errorf("download %s: unknown blob size", j.Digest)
	}
	if err := os.MkdirAll(j.Dir, 0o755); err != nil {
		return "", fmt.Errorf("download %s: %w", j.Digest, err)
	}
	tmp := filepath.Join(j.Dir, config.DownloadFileName)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", j.Digest, err)
	}
	defer f.Close()
	// Two devices of one layer directory (images attached by reference share
	// them by digest) must not fill one file: the second waits, then finds the
	// first one's overlaybd.commit.
	if err := lockFile(ctx, f); err != nil {
		return "", fmt.Errorf("download %s: %w", j.Digest, err)
	}
	if _, err := os.Stat(final); err == nil {
		have.Store(j.Size)
		return final, nil
	}
	if st, err := f.Stat(); err == nil && (force || st.Size() != j.Size) {
		// A different size is another blob's leftover; after a digest mismatch
		// nothing already present can be trusted.
		err = f.Truncate(0)
		if err != nil {
			return "", fmt.Errorf("download %s: %w", j.Digest, err)
		}
	}
	if err := f.Truncate(j.Size); err != nil {
		return "", fmt.Errorf("download %s: %w", j.Digest, err)
	}
	var todo []int64
	have.Store(0)
	for off := int64(0); off < j.Size; off += int64(o.BlockSize) {
		end := min(off+int64(o.BlockSize), j.Size)
		if present(f, off, end) {
			have.Add(end - off)
			continue
		}
		todo = append(todo, off)
	}
	if err := fetchChunks(ctx, f, j, o, todo, have, fetched); err != nil {
		return "", fmt.Errorf("download %s: %w", j.Digest, err)
	}
	got, err := want.Algorithm().FromReader(io.NewSectionReader(f, 0, j.Size))
	if err != nil {
		return "", fmt.Errorf("download %s: hash: %w", j.Digest, err)
	}
	if got != want {
		f.Close()
		os.Remove(tmp) // the copy is discarded: reads stay remote
		return "", fmt.Errorf("download %s: local copy hashes to %s: %w", j.Digest, got, ErrDigest)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("download %s: %w", j.Digest, err)
	}
	if err := atomicfile.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("download %s: %w", j.Digest, err)
	}
	return final, nil
}

// lockFile takes an exclusive flock on f (released when f is closed), polling so
// that ctx can end the wait.
func lockFile(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// present reports whether [off, end) of f holds data (no hole), which is how a
// resumed download knows what an earlier attempt already wrote.
func present(f *os.File, off, end int64) bool {
	h, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
	return err == nil && h >= end
}

func fetchChunks(ctx context.Context, f *os.File, j Job, o Options, todo []int64, have, fetched *atomic.Int64) error {
	g, gctx := errgroup.WithContext(ctx)
	next := make(chan int64)
	for w := 0; w < min(o.Parallel, max(len(todo), 1)); w++ {
		g.Go(func() error {
			buf := make([]byte, o.BlockSize)
			for off := range next {
				n := int(min(int64(o.BlockSize), j.Size-off))
				if err := fetchChunk(gctx, f, j, o, buf[:n], off, fetched); err != nil {
					return err
				}
				have.Add(int64(n))
			}
			return nil
		})
	}
feed:
	for _, off := range todo {
		select {
		case next <- off:
		case <-gctx.Done():
			break feed
		}
	}
	close(next)
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// fetchChunk reads one chunk (paced by the limiter, two tries as the reference)
// and writes it in place.
func fetchChunk(ctx context.Context, f *os.File, j Job, o Options, buf []byte, off int64, fetched *atomic.Int64) error {
	for done := 0; done < len(buf); {
		n := min(len(buf)-done, 1<<20)
		if err := o.Limiter.Wait(ctx, n); err != nil {
			return err
		}
		done += n
	}
	var err error
	for try := 0; try < 2; try++ {
		var n int
		n, err = readAt(ctx, j.Source, buf, off)
		fetched.Add(int64(n))
		if n == len(buf) {
			err = nil
			break
		}
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err != nil {
		return fmt.Errorf("read %d bytes at %d: %w", len(buf), off, err)
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return nil
}

// ReadIntent is the intent of the download's reads: in the background (in
// Dragonfly mode below on-demand reads), exactly the asked ranges.
var ReadIntent = blobio.Background

// readAt reads src at off with ctx, which cancels a registry blob's HTTP request
// at once, so that Stop (a detach, a daemon stop) does not wait for a stalled
// registry's read deadline. It returns when ctx ends even if the read does not
// honour it: an abandoned read still fills p later, so the caller must drop p
// when ctx has ended.
func readAt(ctx context.Context, src blobio.Reader, p []byte, off int64) (int, error) {
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := src.ReadAtIntent(ctx, ReadIntent, p, off)
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		return r.n, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
