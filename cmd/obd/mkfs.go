package main

import (
	"fmt"

	"github.com/obd-project/obd/ext4"
	"github.com/obd-project/obd/lsmt"
)

// mkfsLayer formats the new layer's disk as ext4 (overlaybd-create --mkfs) with the
// reference's make_extfs parameters, through obd's own ext4 writer (the one image
// conversion uses): no external tool, reproducible bytes. The new layer reads as
// zeros, which is what ext4.Mkfs needs: it writes metadata only.
func mkfsLayer(w *lsmt.Writable) error {
	size := int64(w.VirtualSize())
	if size < ext4.MinMkfsSize {
		return fmt.Errorf("--mkfs: a %d-byte disk is too small for ext4 (at least %d bytes)", size, ext4.MinMkfsSize)
	}
	if err := ext4.Mkfs(w, size); err != nil {
		return fmt.Errorf("--mkfs: %w", err)
	}
	return nil
}
