package download

import (
	"context"
	"sync"
	"time"
)

// Limiter paces bytes to a rate shared by every download that uses it (the
// reference's maxMBps holds over all layers). It has no burst: a caller pays for
// its bytes before it may send them, so the average over any run of reads stays
// at or below the rate.
type Limiter struct {
	rate float64 // bytes per second; <= 0 = unlimited

	mu   sync.Mutex
	next time.Time
}

// NewLimiter returns a limiter of bytesPerSec; <= 0 means unlimited.
func NewLimiter(bytesPerSec float64) *Limiter { return &Limiter{rate: bytesPerSec} }

// Rate is the limit in bytes per second (<= 0: none).
func (l *Limiter) Rate() float64 {
	if l == nil {
		return 0
	}
	return l.rate
}

// Wait blocks until n more bytes fit under the rate, or ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if l == nil || l.rate <= 0 || n <= 0 {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	until := l.next
	l.mu.Unlock()
	if !sleep(ctx, time.Until(until)) {
		return ctx.Err()
	}
	return nil
}
