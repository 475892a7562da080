package image

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/trace"
)

// countingRemote serves "remote" blobs from local files and counts the bytes read,
// standing in for the registry + cache path in this package's tests.
type countingRemote struct{ bytes atomic.Int64 }

type countingBlob struct {
	*os.File
	size int64
	n    *atomic.Int64
}

func (b *countingBlob) Size() int64 { return b.size }
func (b *countingBlob) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.File.ReadAt(p, off)
	b.n.Add(int64(n))
	return n, err
}

func (r *countingRemote) OpenBlob(ctx context.Context, url string, l config.Layer) (RemoteBlob, error) {
	b, err := r.open(url)
	if err != nil {
		return nil, err
	}
	return remoteOf(b), nil
}

func (r *countingRemote) open(url string) (*countingBlob, error) {
	f, err := os.Open(filepath.Join(bstack, filepath.Base(url)))
	if err != nil {
		return nil, err
	}
	st, _ := f.Stat()
	return &countingBlob{File: f, size: st.Size(), n: &r.bytes}, nil
}

// TestTraceRecordThenReplay records the reads of one attach (recordTracePath naming an
// empty file) and replays them on the next attach of the same config.
func TestTraceRecordThenReplay(t *testing.T) {
	dir := t.TempDir()
	tracePath := filepath.Join(dir, "trace")
	if err := os.WriteFile(tracePath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// "Remote" layers named by digest-like file names served by countingRemote.
	cfg := &config.ImageConfig{RepoBlobURL: "https://example.invalid/v2/r/blobs",
		Lowers:          []config.Layer{{Digest: "b0.commit"}, {Digest: "b1.commit"}},
		RecordTracePath: tracePath}
	rem := &countingRemote{}
	im, err := Open(context.Background(), cfg, Options{Remote: rem})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for _, off := range []int64{0, 8 << 20, 67108864} {
		if _, err := im.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := trace.ReadTraceFile(tracePath)
	if err != nil || len(recs) == 0 {
		t.Fatalf("recorded trace: %d records, %v", len(recs), err)
	}
	if _, err := os.Stat(tracePath + ".ok"); err != nil {
		t.Errorf("no .ok file after recording: %v", err)
	}
	var recorded int64
	for _, r := range recs {
		recorded += int64(r.Count)
	}
	// Replay: the next attach reads at least the recorded bytes in the background.
	rem.bytes.Store(0)
	im, err = Open(context.Background(), cfg, Options{Remote: rem})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-im.TraceDone():
	case <-time.After(30 * time.Second):
		t.Fatal("replay did not finish")
	}
	if got := rem.bytes.Load(); got < recorded {
		t.Errorf("replay read %d blob bytes, the trace records %d", got, recorded)
	}
	im.Close()
}
