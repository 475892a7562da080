package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/zfile"
)

// flakyRemote serves the blob with one flipped byte on its first read once armed
// (bytes a bad peer or proxy delivered into the cache); Evict stands in for the
// cache's self-healing.
type flakyRemote struct {
	data    []byte
	reads   int
	armed   bool
	evicted int
	onRead  func()
}

func (r *flakyRemote) Size() int64  { return int64(len(r.data)) }
func (r *flakyRemote) Close() error { return nil }
func (r *flakyRemote) Evict(off, n int64) error {
	r.evicted++
	return nil
}
func (r *flakyRemote) ReadAt(p []byte, off int64) (int, error) {
	n := copy(p, r.data[off:])
	if !r.armed {
		return n, nil
	}
	r.reads++
	if r.reads == 1 {
		p[len(p)/2] ^= 0xff
		if r.onRead != nil {
			r.onRead()
		}
	}
	return n, nil
}

// A ZFile block that fails its CRC on the remote copy just as the background
// download swaps in the verified local copy is re-read from the local copy
// instead of failing with EIO.
func TestEvictAfterSwapRereadsLocalCopy(t *testing.T) {
	plain := make([]byte, 64<<10)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range plain {
		plain[i] = byte(rnd.IntN(4))
	}
	var zb bytes.Buffer
	zw, err := zfile.NewWriter(&zb, zfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(plain)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "overlaybd.commit")
	if err := os.WriteFile(local, zb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	remote := &flakyRemote{data: zb.Bytes()}
	s := newSwapBlob(remoteOf(remote))
	defer s.Close()
	z, err := zfile.Open(s, s.Size(), zfile.WithBlockCache(0))
	if err != nil {
		t.Fatal(err)
	}
	remote.armed = true
	remote.onRead = func() {
		if err := s.switchTo(local); err != nil {
			t.Error(err)
		}
	}
	buf := make([]byte, 4096)
	_, err = z.ReadAt(buf, 0)
	var be *zfile.BlockError
	if errors.As(err, &be) {
		t.Fatalf("read failed although the local copy is good: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, plain[:4096]) {
		t.Error("wrong bytes")
	}
	if remote.reads != 1 {
		t.Errorf("%d remote reads after the swap, want only the first", remote.reads)
	}
}

// hangingSourceBlob is a remote blob whose raw registry side (what the background
// download reads) hangs, as a stalled registry does until the read's deadline; it
// ends early only when the blob is closed. Its reads take no context.
type hangingSourceBlob struct {
	testRemoteBlob
	countingBlob *countingBlob
	closed       chan struct{}
	delay        time.Duration
}

func (b *hangingSourceBlob) Close() error          { close(b.closed); return b.countingBlob.File.Close() }
func (b *hangingSourceBlob) Direct() blobio.Reader { return hungReader{b} }

// hungReader is the hanging registry side; its reads ignore their context.
type hungReader struct{ b *hangingSourceBlob }

func (h hungReader) Size() int64 { return h.b.Size() }
func (h hungReader) ReadAtIntent(context.Context, blobio.Intent, []byte, int64) (int, error) {
	select {
	case <-time.After(h.b.delay):
	case <-h.b.closed:
	}
	return 0, io.ErrUnexpectedEOF
}

type hangingRemote struct{ countingRemote }

func (r *hangingRemote) OpenBlob(ctx context.Context, url string, l config.Layer) (RemoteBlob, error) {
	b, err := r.countingRemote.open("b0.commit")
	if err != nil {
		return nil, err
	}
	return &hangingSourceBlob{testRemoteBlob: remoteOf(b), countingBlob: b, closed: make(chan struct{}), delay: 10 * time.Second}, nil
}

// Close (detach) does not wait for a background download read that hangs, even
// one that cannot be cancelled: the read is abandoned and the blob closed.
func TestCloseAbandonsHungDownloadRead(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.ImageConfig{RepoBlobURL: "https://example.invalid/v2/r/blobs",
		Lowers:   []config.Layer{{Digest: "sha256:" + strings.Repeat("ab", 32), Dir: filepath.Join(dir, "l0"), Size: 1}},
		Download: config.Download{Enable: true, BlockSize: 1 << 20}}
	if err := os.MkdirAll(filepath.Join(dir, "l0"), 0o755); err != nil {
		t.Fatal(err)
	}
	im, err := Open(context.Background(), cfg, Options{Remote: &hangingRemote{},
		Download: &download.Options{Delay: 0, Tries: 1}})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); im.Downloads()[0].State != download.StateDownloading; {
		if time.Now().After(deadline) {
			t.Fatalf("download never started: %+v", im.Downloads())
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	im.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("detach blocked %v on the background download's read", took)
	}
}
