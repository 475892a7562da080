package snapshotter

import (
	"context"

	"go.uber.org/zap"
)

// inBackground runs what Remove leaves to later with asyncRemove (ACI, and
// containerd's overlayfs snapshotter, defer it to Cleanup): Remove returns once the
// metadata is gone. A removal that fails here is retried by Cleanup, which releases
// the device and the directory of every snapshot the metadata no longer knows.
func (s *Snapshotter) inBackground(key string, fn func(context.Context) error) {
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		if err := fn(context.Background()); err != nil {
			s.metrics.errors.WithLabelValues("Remove").Inc()
			zap.L().Warn("background removal failed; Cleanup retries it", zap.String("key", key), zap.Error(err))
		}
	}()
}
