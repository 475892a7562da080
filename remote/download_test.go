package remote

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/registry/registrytest"
	"go.uber.org/zap"
)

// tamperOpener hands out blobs whose download source inverts one byte per read:
// a registry (or mirror) serving other bytes to the full download only.
type tamperOpener struct{ *Opener }

type tamperBlob struct{ image.RemoteBlob }

type flipper struct{ r blobio.Reader }

func (f flipper) Size() int64 { return f.r.Size() }
func (f flipper) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	n, err := f.r.ReadAtIntent(ctx, in, p, off)
	if n > 0 {
		p[n/2] ^= 0x55
	}
	return n, err
}

func (b tamperBlob) Direct() blobio.Reader { return flipper{b.RemoteBlob.Direct()} }

func (o tamperOpener) OpenBlob(ctx context.Context, url string, l config.Layer) (image.RemoteBlob, error) {
	b, err := o.Opener.OpenBlob(ctx, url, l)
	if err != nil {
		return nil, err
	}
	return tamperBlob{b}, nil
}

func downloadConfig(t *testing.T, cfg *config.ImageConfig) *config.ImageConfig {
	root := t.TempDir()
	for i := range cfg.Lowers {
		cfg.Lowers[i].Dir = filepath.Join(root, "layer", cfg.Lowers[i].Digest[7:19])
	}
	cfg.Download = config.Download{Enable: true, MaxMBps: 1000, TryCnt: 2}
	return cfg
}

func waitDownload(t *testing.T, im *image.Image) []download.Status {
	t.Helper()
	select {
	case <-im.DownloadDone():
	case <-time.After(60 * time.Second):
		t.Fatalf("download not done within 60 s: %+v", im.Downloads())
	}
	return im.Downloads()
}

// After attach, the background download fetches every layer whole, verifies it
// and moves reads to the local copies: with the registry down every read of the
// disk is still right, though most of it was never read lazily.
func TestBackgroundDownloadThenRegistryDown(t *testing.T) {
	blobs := stackBlobs(t)
	rs := regions(t, truth(t, blobs))
	reg := registrytest.New(t)
	front := registrytest.NewCountingProxy(t, reg.URL)
	cfg := downloadConfig(t, pushStack(t, reg, "stack", blobs)(front.URL))
	op := newOpener(t, t.TempDir(), cache.Options{})
	defer op.Close()
	im, err := image.Open(context.Background(), cfg, image.Options{Remote: op, Logger: zap.NewNop(),
		Download: &download.Options{Delay: 10 * time.Millisecond, Gap: time.Millisecond, Tries: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for i, s := range waitDownload(t, im) {
		if s.State != download.StateDone || s.Bytes != int64(len(blobs[i])) {
			t.Fatalf("layer %d: %+v", i, s)
		}
		got, err := os.ReadFile(filepath.Join(cfg.Lowers[i].Dir, config.CommitFileName))
		if err != nil || !bytes.Equal(got, blobs[i]) {
			t.Fatalf("layer %d: local copy wrong (%v)", i, err)
		}
	}
	front.Close() // the registry is down
	if failed, err := readRegions(t, im, rs, 4); failed > 0 {
		t.Fatalf("after the download, with the registry down: %d reads failed: %v", failed, err)
	}
	// A later attach opens the local copies: no registry at all.
	im2, err := image.Open(context.Background(), cfg, image.Options{Remote: op, Logger: zap.NewNop(),
		Download: &download.Options{Delay: time.Hour}})
	if err != nil {
		t.Fatalf("attach after download, registry down: %v", err)
	}
	defer im2.Close()
	if failed, err := readRegions(t, im2, rs, 4); failed > 0 {
		t.Fatalf("second attach: %d reads failed: %v", failed, err)
	}
}

// A download whose bytes do not match the digest is discarded: no local copy,
// the layer stays lazy and every read is still right.
func TestBackgroundDownloadTampered(t *testing.T) {
	blobs := stackBlobs(t)
	rs := regions(t, truth(t, blobs))
	reg := registrytest.New(t)
	cfg := downloadConfig(t, pushStack(t, reg, "stack", blobs)(reg.URL))
	op := newOpener(t, t.TempDir(), cache.Options{})
	defer op.Close()
	im, err := image.Open(context.Background(), cfg, image.Options{Remote: tamperOpener{op}, Logger: zap.NewNop(),
		Download: &download.Options{Gap: time.Millisecond, Tries: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for i, s := range waitDownload(t, im) {
		if s.State != download.StateFailed || s.Attempts != 2 {
			t.Errorf("layer %d: %+v; want failed after 2 attempts", i, s)
		}
		for _, n := range []string{config.CommitFileName, config.DownloadFileName} {
			if _, err := os.Stat(filepath.Join(cfg.Lowers[i].Dir, n)); !os.IsNotExist(err) {
				t.Errorf("layer %d: %s exists (%v)", i, n, err)
			}
		}
	}
	if failed, err := readRegions(t, im, rs, 4); failed > 0 {
		t.Fatalf("after a rejected download: %d reads failed: %v", failed, err)
	}
}

// A detach (Image.Close) while the registry stalls in the middle of the background
// download returns at once: the download's in-flight registry read is cancelled,
// not waited for until its deadline.
func TestDetachStalledDownload(t *testing.T) {
	blobs := stackBlobs(t)
	reg := registrytest.New(t)
	p := registrytest.NewFaultProxy(t, reg.URL)
	cfg := downloadConfig(t, pushStack(t, reg, "stack", blobs)(p.URL))
	cfg.Download.MaxMBps = 1 // a few seconds for the stack: the stall lands mid-download
	op := newOpener(t, t.TempDir(), cache.Options{})
	defer op.Close()
	im, err := image.Open(context.Background(), cfg, image.Options{Remote: op, Logger: zap.NewNop(),
		Download: &download.Options{BlockSize: 64 << 10, Parallel: 2, Tries: 1}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for im.Downloads()[0].Fetched == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("download never started: %+v", im.Downloads())
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.SetLatency(time.Minute) // the registry stalls
	stalled := p.Matched()
	for p.Matched() == stalled { // a download read is now waiting on it
		if time.Now().After(deadline) {
			t.Fatalf("no download read reached the stalled registry: %+v", im.Downloads())
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	im.Close()
	took := time.Since(start)
	t.Logf("detach with a stalled download took %v (%+v)", took, im.Downloads())
	if took > 2*time.Second {
		t.Errorf("detach took %v: it waited for the stalled registry read", took)
	}
	if s := im.Downloads()[0]; s.State == download.StateDone {
		t.Errorf("download finished despite the stall: %+v", s)
	}
}
