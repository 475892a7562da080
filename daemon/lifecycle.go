package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/obd-project/obd/config"
	"go.uber.org/zap"
)

// bringUp is the one start-up path of a device, for an attach and for a recovery
// after a crash: mark its layer directories used, assemble the image, serve it
// (a new device, or with recovering the recorded one of the dead server), save
// the record and register the device. cfg is loaded, with the download settings
// inherited; rec names the device (its id reserved, or recorded).
func (m *Manager) bringUp(ctx context.Context, cfg *config.ImageConfig, rec Record, recovering bool) (d *device, err error) {
	dirs := m.layerDirsOf(cfg)
	m.useLayerDirs(dirs)
	defer func() {
		if err != nil {
			m.releaseLayerDirs(dirs)
		}
	}()
	// The record keeps what the attach asked for; tr is what this start runs.
	tr := rec.TraceOptions
	if recovering {
		tr = m.recoverTrace(&rec)
	}
	holder := fmt.Sprintf("obd device %d", rec.ID)
	img, err := openImage(ctx, cfg, m.imageOptions(tr, holder))
	if err != nil && recovering && tr != (TraceOptions{}) {
		// A trace is an optimisation: the device comes back without it.
		m.lg.Error("recovered device: trace not restarted", zap.Int("id", rec.ID), zap.Error(err))
		rec.TraceRecovery, rec.TraceNote = TraceRecoveryFailed, "not restarted after a daemon restart: "+err.Error()
		img, err = openImage(ctx, cfg, m.imageOptions(TraceOptions{}, holder))
	}
	if err != nil {
		return nil, err
	}
	d = &device{rec: rec, img: img, target: &countingTarget{t: img, id: rec.ID, lg: m.ioLog}, dirs: dirs}
	if recovering {
		err = m.recover(d)
	} else if err = m.serve(d); err != nil {
		err = fmt.Errorf("failed to create overlaybd device: %w", err)
	}
	if err != nil {
		img.Close()
		return nil, err
	}
	if err := m.state.save(d.rec); err != nil {
		if recovering {
			// The device is served again already: losing the record only
			// costs the next recovery.
			m.lg.Warn("state", zap.Error(err))
		} else {
			d.srv.Close()
			img.Close()
			return nil, err
		}
	}
	m.mu.Lock()
	if m.stopping && !recovering {
		// Stop no longer looks for new devices: leave nothing it would not detach.
		m.mu.Unlock()
		d.srv.Close()
		img.Close()
		m.state.remove(rec.ID)
		return nil, errors.New("the daemon is stopping: attach abandoned")
	}
	m.devices[rec.ID] = d
	m.mu.Unlock()
	return d, nil
}
