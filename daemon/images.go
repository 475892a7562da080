package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"go.uber.org/zap"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/internal/atomicfile"
	"github.com/obd-project/obd/lsmt"
	digest "github.com/opencontainers/go-digest"
)

// Resolver turns an image reference into a device config whose layers are remote.
type Resolver interface {
	Config(ctx context.Context, ref string) (*config.ImageConfig, error)
}

// generatedDir holds the configs written for image references; a state record points
// at them, so a restarted daemon recovers these devices like any other.
func (m *Manager) generatedDir() string {
	base := m.opts.StateDir
	if base == "" {
		base = m.opts.RunDir
	}
	return filepath.Join(base, "images")
}

// layersDir holds the layer directories of images attached by reference: the
// background download's .download and overlaybd.commit files, by digest.
func (m *Manager) layersDir() string {
	return filepath.Join(filepath.Dir(m.generatedDir()), "layers")
}

// AttachImage resolves req.Ref, writes its config.v1.json and attaches it.
func (m *Manager) AttachImage(ctx context.Context, req ImageRequest) (Status, error) {
	if m.opts.Resolver == nil {
		return Status{}, errors.New("this daemon has no registry access (no cache directory?)")
	}
	cfg, err := m.opts.Resolver.Config(ctx, req.Ref)
	if err != nil {
		m.lg.Warn("attach failed", zap.String("image", req.Ref), zap.Error(err))
		return Status{}, err
	}
	sum := sha256.Sum256([]byte(req.Ref + "\x00" + req.Upper + "\x00" + time.Now().String()))
	dir := filepath.Join(m.generatedDir(), sanitize(req.Ref)+"-"+hex.EncodeToString(sum[:4]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Status{}, err
	}
	if req.Upper != "" {
		up, err := ensureUpper(req.Upper)
		if err != nil {
			os.RemoveAll(dir)
			return Status{}, err
		}
		cfg.Upper = up
	}
	if g := m.opts.Global; g.HasDownload && g.Download.Enable {
		// Background download needs a layer directory; it outlives the device so
		// later attaches open the downloaded copy (shared by digest).
		for i := range cfg.Lowers {
			l := &cfg.Lowers[i]
			if d, err := digest.Parse(l.Digest); err == nil && d.Algorithm() == digest.SHA256 && l.Dir == "" && l.File == "" {
				l.Dir = filepath.Join(m.layersDir(), d.Encoded())
			}
		}
	}
	cfg.ResultFile = filepath.Join(dir, "result")
	b, err := cfg.Encode()
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(dir, "config.v1.json"), b, 0o600)
	}
	if err != nil {
		os.RemoveAll(dir)
		return Status{}, err
	}
	st, err := m.AttachTrace(ctx, filepath.Join(dir, "config.v1.json"), req.Frontend, req.TraceOptions)
	if err != nil {
		os.RemoveAll(dir)
	}
	return st, err
}

func sanitize(ref string) string {
	r := strings.NewReplacer("/", "_", ":", "_", "@", "_")
	s := r.Replace(ref)
	if len(s) > 80 {
		s = s[len(s)-80:]
	}
	return s
}

// ensureUpper creates dir/data + dir/index as an empty writable layer unless they
// exist; its size 0 means "the image's size".
func ensureUpper(dir string) (config.Upper, error) {
	up := config.Upper{Data: filepath.Join(dir, "data"), Index: filepath.Join(dir, "index")}
	if _, err := os.Stat(up.Data); err == nil {
		return up, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return up, err
	}
	data, err := os.OpenFile(up.Data, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return up, err
	}
	defer data.Close()
	index, err := os.OpenFile(up.Index, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		os.Remove(up.Data)
		return up, err
	}
	defer index.Close()
	w, err := lsmt.Create(data, index, lsmt.CreateOptions{})
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		os.Remove(up.Data)
		os.Remove(up.Index)
		return up, fmt.Errorf("upper %s: %w", dir, err)
	}
	return up, nil
}

// forgetGenerated removes a generated config directory when its device goes away.
func (m *Manager) forgetGenerated(configPath string) {
	dir := filepath.Dir(configPath)
	if filepath.Dir(dir) == m.generatedDir() {
		os.RemoveAll(dir)
	}
}
