package trace

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// DefaultPollInterval is how often the reference checks for the lock file.
const DefaultPollInterval = time.Second

// LockPath is the file whose deletion asks a recording to stop.
func LockPath(tracePath string) string { return tracePath + ".lock" }

// OKPath is the file created once the trace has been dumped.
func OKPath(tracePath string) string { return tracePath + ".ok" }

// Recording runs the reference's record protocol for one trace path:
// StartRecording creates <trace>.lock; Wait polls it, and when it is deleted (or the
// context ends, i.e. the device closes) stops the recorder, dumps the trace, removes
// the lock and creates <trace>.ok. Tools such as `ctr record-trace` wait for .ok.
type Recording struct {
	tracePath string
	rec       *Recorder
}

// StartRecording creates the lock file and clears a stale .ok from an earlier run
// (the reference means to, but its check is inverted), so that .ok only ever signals
// this recording's dump.
func StartRecording(tracePath string, rec *Recorder) (*Recording, error) {
	if err := os.Remove(OKPath(tracePath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("trace: removing stale %s: %w", OKPath(tracePath), err)
	}
	f, err := os.OpenFile(LockPath(tracePath), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return nil, fmt.Errorf("trace: creating lock: %w", err)
	}
	f.Close()
	return &Recording{tracePath: tracePath, rec: rec}, nil
}

// Wait blocks until the lock file disappears or ctx ends, checking every poll
// (DefaultPollInterval if poll <= 0), then finishes the recording. A context end is
// the normal "device closed" stop and is not an error. If the dump fails the lock is
// left in place and no .ok is created, as in the reference.
func (s *Recording) Wait(ctx context.Context, poll time.Duration) error {
	if poll <= 0 {
		poll = DefaultPollInterval
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-t.C:
			_, err := os.Lstat(LockPath(s.tracePath))
			done = errors.Is(err, fs.ErrNotExist)
		}
	}
	return s.finish()
}

func (s *Recording) finish() error {
	s.rec.Stop()
	if err := s.rec.Dump(s.tracePath); err != nil {
		return err
	}
	if err := os.Remove(LockPath(s.tracePath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("trace: removing lock: %w", err)
	}
	f, err := os.OpenFile(OKPath(s.tracePath), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return fmt.Errorf("trace: creating %s: %w", OKPath(s.tracePath), err)
	}
	return f.Close()
}

// RecordUntil is StartRecording followed by Wait. Run it in its own goroutine once
// the layers are wrapped; it returns after the trace is dumped.
func RecordUntil(ctx context.Context, tracePath string, rec *Recorder, poll time.Duration) error {
	s, err := StartRecording(tracePath, rec)
	if err != nil {
		return err
	}
	return s.Wait(ctx, poll)
}
