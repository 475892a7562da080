package image

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/obd-project/obd/ext4"
	"github.com/obd-project/obd/trace"
	"go.uber.org/zap"
)

// erofsMagic is EROFS_SUPER_MAGIC_V1, at byte 1024 of an erofs image.
const erofsMagic = 0xE0F5E1E2

// errErofs says the merged image is erofs, which file lists cannot map yet.
var errErofs = errors.New("the image is erofs: file-list prefetch is not supported yet for erofs")

// fileListStats describes a file-list prefetch.
type fileListStats struct {
	Files   int // files (and directories named without a walk) mapped
	Missing int // entries naming no file
	Mapped  time.Duration
	trace.Stats
}

// disk is what file-list prefetch reads: the merged image.
type disk interface {
	io.ReaderAt
	Size() int64
}

// replayFileList maps the entries of fl to their extents in the ext4 file system of
// the merged image d (as the reference's dynamic prefetcher FIEMAPs them) and reads
// those extents with workers readers, so that the caches below hold them.
func replayFileList(ctx context.Context, lg *zap.Logger, d disk, fl *trace.FileList, workers int) (fileListStats, error) {
	start := time.Now()
	var st fileListStats
	var magic [4]byte
	if _, err := d.ReadAt(magic[:], 1024); err == nil && binary.LittleEndian.Uint32(magic[:]) == erofsMagic {
		return st, errErofs
	}
	fsys, err := ext4.Open(d, d.Size())
	if err != nil {
		return st, err
	}
	var recs []trace.Record
	seen := map[uint32]bool{} // hard links and overlapping entries are read once
	add := func(p string, in *ext4.Inode) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if seen[in.Num] || in.IsSymlink() {
			return nil
		}
		seen[in.Num] = true
		exts, err := fsys.Extents(in)
		if err != nil {
			lg.Debug("file-list prefetch: cannot map", zap.String("path", p), zap.Error(err))
			return nil
		}
		te := make([]trace.Extent, 0, len(exts))
		for _, e := range exts {
			te = append(te, trace.Extent{Physical: e.Physical, Length: e.Length})
		}
		st.Files++
		recs = append(recs, trace.FileExtentRecords(in.Size, te)...)
		return nil
	}
	for _, e := range fl.Entries {
		in, err := fsys.Lookup(e.Path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				st.Missing++
				lg.Debug("file-list prefetch: no such path", zap.String("path", e.Path))
			} else {
				lg.Debug("file-list prefetch: lookup failed", zap.String("path", e.Path), zap.Error(err))
			}
			continue
		}
		if e.Walk && in.IsDir() {
			err = fsys.Walk(in, e.Path, func(p string, in *ext4.Inode) error {
				if in.IsRegular() {
					return add(p, in)
				}
				return nil
			})
		} else {
			err = add(e.Path, in)
		}
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		if err != nil {
			lg.Debug("file-list prefetch: walk failed", zap.String("path", e.Path), zap.Error(err))
		}
	}
	// A mount reads the journal's superblock: fetch it too, so that mounting and
	// reading the listed files needs nothing more.
	if j := fsys.JournalInode(); j != 0 {
		if in, err := fsys.Inode(j); err == nil {
			if exts, err := fsys.Extents(in); err == nil && len(exts) > 0 {
				recs = append(recs, trace.Record{Op: trace.OpRead, Count: uint64(fsys.BlockSize()), Offset: exts[0].Physical})
			}
		}
	}
	st.Mapped = time.Since(start)
	st.Stats, err = trace.Replay(ctx, recs, []io.ReaderAt{d}, workers)
	if err != nil {
		return st, fmt.Errorf("replay: %w", err)
	}
	return st, nil
}
