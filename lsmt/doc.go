// Package lsmt implements the OverlayBD LSMT layer format: sealed read-only layers, the
// merged index of a stack of layers, the stacked view served as a block device,
// writable (append-only and sparse) layers, and seal/commit. It is pure format code:
// no daemon, network or logging concerns.
//
// All addresses inside the format are 512-byte sectors; byte values appear only in the
// header/trailer fields index_offset and virtual_size.
//
//   - OpenLayer reads a sealed layer through any io.ReaderAt (a plain file, a ZFile
//     decompressor, a remote blob), validating it like the reference; OpenWarpLayer
//     reads a turboOCI layer whose entries also point into the original tar stream.
//   - NewImage stacks up to 255 sealed layers (bottom first) and an optional Writable
//     upper into an Image, a blockdev.Target. Lookups use Index, a static search tree.
//   - Create / OpenWritable manage writable layers (*os.File); CloseSeal seals one in
//     place; Commit packs a Writable or a whole Image (flatten / overlaybd-merge) into a
//     new sealed layer, byte-identical to the reference tools.
//
// Decisions where the reference leaves room:
//   - Image.ReadAt accepts any offset and length (an export tool need not align);
//     writes and discards must be 512-aligned.
//   - A short backing read reads zeros for the missing tail only when the backing store
//     reports io.EOF; any other error is returned.
//   - CloseSeal pads the appended index to 512 bytes with invalid entries (the reference
//     leaves garbage there; only the trailer's index_size entries are read either way).
//   - A torn last record of a writable index log is ignored at open and overwritten by
//     the next write, so the log stays a whole number of records.
//   - A record whose data lies past the data file's end (power loss after an unflushed
//     write) is dropped at open rather than failing the layer (Writable.Dropped).
//   - Writes and discards that would push the index log past MaxIndexSize records fail
//     with ENOSPC instead of making a layer that no longer opens.
//   - A merged index holds at most MaxMergedEntries (16M, ~450 MiB) entries, not the
//     reference's 128M: a hostile stack of index-heavy layers gets a clear error
//     instead of costing GiBs.
//   - Under lower layers, a sparse upper persists discards and partial-block writes in
//     its data file (sparse.go), so it reads the same after a reopen.
package lsmt
