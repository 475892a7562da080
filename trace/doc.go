// Package trace records which ranges of each lower layer a container reads while it
// starts, stores them in the reference OverlayBD binary trace format, and replays them
// on a later attach so the layer caches are warm before the container asks.
//
// It is pure library code: the daemon decides the mode (DetectMode), wraps the lower
// layers with a Recorder or hands them to Replay, and runs the lock/.ok protocol
// (RecordUntil). Offsets are in the decompressed LSMT-file space of each layer, layer
// index 0 is the bottom lower, exactly as in the reference prefetcher.
//
// File-list ("dynamic") prefetch is only parsed here (ParseFileList, FileExtentRecords):
// image/ maps the paths to extents of the merged image with the ext4 package.
package trace
