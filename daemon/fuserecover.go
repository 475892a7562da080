package daemon

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/obd-project/obd/fuseblk"
)

// recoverFUSE serves a FUSE device again at its recorded mount directory, in
// place of the dead mount of the killed daemon, and moves the loop devices set up
// over the dead mount's image file (the snapshotter's, a user's losetup) onto the
// new one, so that the file systems mounted from them keep working. Only
// read-only loop devices can move (the kernel's rule for LOOP_CHANGE_FD): a
// writable one keeps failing its I/O, which is logged; the device itself is
// served either way.
func (m *Manager) recoverFUSE(d *device) error {
	loops, err := fuseblk.TakeOverStale(d.rec.MountDir)
	if err != nil {
		return fmt.Errorf("stale mount at %s: %w", d.rec.MountDir, err)
	}
	if err := m.serveFUSE(d); err != nil {
		return err
	}
	if len(loops) == 0 {
		return nil
	}
	if err := fuseblk.RebindLoops(loops, d.rec.Path); err != nil {
		m.lg.Error("loop devices left on the dead mount: their I/O fails", zap.Int("id", d.rec.ID), zap.Strings("loops", loops), zap.Error(err))
		return nil
	}
	m.lg.Info("loop devices moved to the new mount", zap.Int("id", d.rec.ID), zap.Strings("loops", loops))
	return nil
}
