package image

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
)

// maxOpenTries bounds the opens of a remote layer whose metadata (tar header,
// ZFile header, trailer or jump table, LSMT header, trailer or index) fails its
// checks: between two tries the bytes the failed open read are evicted from the
// cache, so a corruption that came from the network (a flipped bit, a bad peer or
// proxy answer that framed correctly) is fetched again instead of failing every
// later attach.
const maxOpenTries = 3

// healable reports whether an open failed on bytes that a refetch may repair:
// a format check, or a ZFile block (holding LSMT metadata) still failing its CRC
// after its own retries. I/O errors are not: the registry client has retried
// them already, and retrying the open would only multiply an outage's delay.
func healable(err error) bool {
	return errors.Is(err, zfile.ErrFormat) || errors.Is(err, tarwrap.ErrFormat) ||
		errors.Is(err, lsmt.ErrCorrupt) || errors.Is(err, zfile.ErrChecksum)
}

// openLog is a remote blob seen by the layer openers: until stop, it records the
// ranges read (by either read method), which are evicted when the open fails.
// The rest of RemoteBlob (Evict for the ZFile block self-healing, Direct, Size,
// Close) is the swapBlob's.
type openLog struct {
	*swapBlob
	stopped atomic.Bool
	mu      sync.Mutex
	ranges  [][2]int64 // [off, end)
}

var _ RemoteBlob = (*openLog)(nil)

func (l *openLog) ReadAt(p []byte, off int64) (int, error) {
	l.note(p, off)
	return l.swapBlob.ReadAt(p, off)
}

func (l *openLog) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	l.note(p, off)
	return l.swapBlob.ReadAtIntent(ctx, in, p, off)
}

func (l *openLog) note(p []byte, off int64) {
	if !l.stopped.Load() && len(p) > 0 {
		l.mu.Lock()
		l.ranges = append(l.ranges, [2]int64{off, off + int64(len(p))})
		l.mu.Unlock()
	}
}

// stop ends the recording: the open succeeded (or was given up).
func (l *openLog) stop() {
	l.stopped.Store(true)
	l.mu.Lock()
	l.ranges = nil
	l.mu.Unlock()
}

// evictRead evicts every range read so far (merged) and returns the bytes evicted.
func (l *openLog) evictRead() (int64, error) {
	l.mu.Lock()
	rs := l.ranges
	l.ranges = nil
	l.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i][0] < rs[j][0] })
	var merged [][2]int64
	for _, r := range rs {
		if k := len(merged) - 1; k >= 0 && r[0] <= merged[k][1] {
			merged[k][1] = max(merged[k][1], r[1])
			continue
		}
		merged = append(merged, r)
	}
	var n int64
	var errs []error
	for _, r := range merged {
		if err := l.Evict(r[0], r[1]-r[0]); err != nil {
			errs = append(errs, err)
		}
		n += r[1] - r[0]
	}
	return n, errors.Join(errs...)
}
