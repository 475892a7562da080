package lsmt

import (
	"os"
)

// checkWritableData refuses, before anything is written, a data file that is not the
// data file of a writable layer: an index file (arguments swapped), a committed layer
// (header flags 0x07), or a layer sealed in place (writable header, sealed trailer at
// the end). Appending to a sealed layer would bury its trailer and lose its index.
func checkWritableData(data *os.File, size int64, h *HeaderTrailer) error {
	switch {
	case h.IsHeader() && !h.IsDataFile() && !h.IsSealed():
		return corruptf("data file %s is the index file of a writable layer (DATA and INDEX swapped?)", data.Name())
	case h.IsSealed():
		return corruptf("data file %s is a sealed (committed) layer, not a writable one: use it as a lower layer, or commit it with --sealed", data.Name())
	}
	if !h.IsHeader() || !h.IsDataFile() {
		return nil // the caller reports the flags
	}
	// Data written to the disk can look like a trailer; one that names this layer's
	// uuid and points inside the file was written by a seal.
	var t HeaderTrailer
	if size >= 2*HeaderSize && readHeader(data, size-HeaderSize, &t) == nil && !t.IsHeader() && t.IsDataFile() && t.IsSealed() &&
		t.UUID == h.UUID && t.IndexOffset >= HeaderSize && t.IndexOffset < uint64(size) {
		return corruptf("data file %s was sealed in place (it ends with a sealed trailer): it is read-only now; use it as a lower layer, or commit it with --sealed", data.Name())
	}
	return nil
}

// checkPair refuses a data file and an index file that are not the two halves of one
// layer: both headers carry the layer's uuid and parent uuid (create writes the same
// header to both files).
func checkPair(data, index *os.File, dh, ih *HeaderTrailer) error {
	if dh.UUID != ih.UUID {
		return corruptf("data file %s (uuid %s) and index file %s (uuid %s) belong to different layers", data.Name(), dh.UUID, index.Name(), ih.UUID)
	}
	if dh.ParentUUID != ih.ParentUUID {
		return corruptf("data file %s (parent uuid %s) and index file %s (parent uuid %s) belong to different layers", data.Name(), dh.ParentUUID, index.Name(), ih.ParentUUID)
	}
	return nil
}
