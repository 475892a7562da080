package image

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

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
	s := newSwapBlob(remote)
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
