package daemon

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/obd-project/obd/config"
	"go.uber.org/zap"
)

// The layer directories under layersDir (background downloads of images attached by
// reference) outlive their devices, so later attaches reuse the downloaded copy.
// They are bounded: when their total size exceeds the limit, the directories no
// device uses are removed, least recently used first. "Used" is any device of this
// daemon (attached, or being attached) and any device in a state record (another
// live process may serve it); a directory's mtime is when its last use ended (or
// its download last wrote to it).

// layerDirPruneInterval is how often the daemon checks the bound while it runs
// (downloads grow the directories of attached devices).
const layerDirPruneInterval = time.Minute

// trashPrefix names a directory being removed: renamed first, so a crash in the
// middle of the removal never leaves a half-removed directory that looks like a layer.
const trashPrefix = ".removing-"

func (m *Manager) layerDirsLimit() int64 {
	if m.opts.LayerDirsBytes > 0 {
		return m.opts.LayerDirsBytes
	}
	return m.opts.Global.DownloadDirBytes()
}

// layerDirsOf returns the lower directories of cfg that live in layersDir.
func (m *Manager) layerDirsOf(cfg *config.ImageConfig) []string {
	root := m.layersDir() + string(filepath.Separator)
	var dirs []string
	for _, l := range cfg.Lowers {
		if d := filepath.Clean(l.Dir); l.Dir != "" && strings.HasPrefix(d, root) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// useLayerDirs marks dirs in use until releaseLayerDirs.
func (m *Manager) useLayerDirs(dirs []string) {
	m.mu.Lock()
	for _, d := range dirs {
		m.dirRefs[d]++
	}
	m.mu.Unlock()
}

// releaseLayerDirs ends a use: the directories' mtime becomes their last use.
func (m *Manager) releaseLayerDirs(dirs []string) {
	now := time.Now()
	m.mu.Lock()
	for _, d := range dirs {
		if m.dirRefs[d]--; m.dirRefs[d] <= 0 {
			delete(m.dirRefs, d)
		}
	}
	m.mu.Unlock()
	for _, d := range dirs {
		os.Chtimes(d, now, now)
	}
}

// layerDirsInUse is every layer directory a device of this daemon or a state record
// refers to.
func (m *Manager) layerDirsInUse() map[string]bool {
	used := map[string]bool{}
	recs, _ := m.state.load()
	for _, r := range recs {
		cfg, err := config.LoadImageConfig(r.Config)
		if err != nil {
			continue
		}
		for _, d := range m.layerDirsOf(cfg) {
			used[d] = true
		}
	}
	m.mu.Lock()
	for d := range m.dirRefs {
		used[d] = true
	}
	m.mu.Unlock()
	return used
}

// PruneLayerDirs removes unused layer directories, least recently used first, until
// the total is within the limit, and returns the removed directories. Directories in
// use count towards the total but are never removed.
func (m *Manager) PruneLayerDirs() []string {
	m.pruneMu.Lock()
	defer m.pruneMu.Unlock()
	ents, err := os.ReadDir(m.layersDir())
	if err != nil {
		return nil
	}
	type dirUse struct {
		path  string
		size  int64
		mtime time.Time
	}
	var all []dirUse
	var total int64
	for _, e := range ents {
		p := filepath.Join(m.layersDir(), e.Name())
		if strings.HasPrefix(e.Name(), trashPrefix) {
			os.RemoveAll(p) // left by a crash during a removal
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.IsDir() {
			continue
		}
		size := diskUsage(p)
		all = append(all, dirUse{p, size, fi.ModTime()})
		total += size
	}
	limit := m.layerDirsLimit()
	if total <= limit {
		return nil
	}
	// In use is taken after the sizes: a directory that became used meanwhile is
	// spared; one released meanwhile waits for the next pass.
	used := m.layerDirsInUse()
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.Before(all[j].mtime) })
	var removed []string
	for _, d := range all {
		if total <= limit {
			break
		}
		if used[d.path] {
			continue
		}
		trash := filepath.Join(m.layersDir(), trashPrefix+filepath.Base(d.path))
		if err := os.Rename(d.path, trash); err != nil {
			m.lg.Warn("layer directory not removed", zap.String("dir", d.path), zap.Error(err))
			continue
		}
		if err := os.RemoveAll(trash); err != nil {
			m.lg.Warn("layer directory not removed", zap.String("dir", d.path), zap.Error(err))
		}
		total -= d.size
		removed = append(removed, d.path)
		m.metrics.layerDirsRemoved.Inc()
		m.lg.Info("removed unused layer directory", zap.String("dir", d.path), zap.Int64("bytes", d.size),
			zap.Time("lastUsed", d.mtime), zap.Int64("total", total), zap.Int64("limit", limit))
	}
	if total > limit {
		m.lg.Warn("layer directories in use exceed their limit", zap.Int64("total", total), zap.Int64("limit", limit))
	}
	return removed
}

// pruneLayerDirsEvery keeps the bound while the daemon runs.
func (m *Manager) pruneLayerDirsEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.PruneLayerDirs()
		}
	}
}

// diskUsage is the space the files under dir take (a .download is sparse).
func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return nil
		}
		if fi, err := e.Info(); err == nil {
			n += blocksOf(fi)
		}
		return nil
	})
	return n
}

func blocksOf(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
