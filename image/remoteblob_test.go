package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/obd-project/obd/internal/blobio"
)

// testRemoteBlob makes a test blob that has ReadAt (and maybe Evict) a RemoteBlob:
// reads with an intent are its ReadAt (noting the intent), Evict is its own or
// blobio.ErrNotEvictable, and it is its own Direct side.
type testRemoteBlob struct {
	Blob
	mu      *sync.Mutex
	intents *[]blobio.Intent
}

func remoteOf(b Blob) testRemoteBlob {
	return testRemoteBlob{Blob: b, mu: new(sync.Mutex), intents: new([]blobio.Intent)}
}

func (t testRemoteBlob) ReadAtIntent(_ context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	t.mu.Lock()
	*t.intents = append(*t.intents, in)
	t.mu.Unlock()
	return t.Blob.ReadAt(p, off)
}

func (t testRemoteBlob) Evict(off, n int64) error { return blobio.Evict(t.Blob, off, n) }
func (t testRemoteBlob) Direct() blobio.Reader    { return t }

func (t testRemoteBlob) seen() []blobio.Intent {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]blobio.Intent(nil), *t.intents...)
}

// Every wrapper of a remote blob implements all of RemoteBlob.
var (
	_ RemoteBlob = (*swapBlob)(nil)
	_ RemoteBlob = (*openLog)(nil)
	_ RemoteBlob = testRemoteBlob{}
)

// The wrappers between a layer reader and the remote blob (openLog, swapBlob,
// the replay view) hand on each read's intent, Evict and Direct;
// once the blob is local, reads with an intent go to the local copy.
func TestRemoteBlobWrappersForwardIntent(t *testing.T) {
	data := []byte("0123456789abcdef")
	var evicted [][2]int64
	rb := remoteOf(&evictRecorder{data: data, evicted: &evicted})
	s := newSwapBlob(rb)
	defer s.Close()
	log := &openLog{swapBlob: s}
	buf := make([]byte, 4)
	for _, in := range []blobio.Intent{blobio.Demand, blobio.Exact, blobio.Background, blobio.ReadAhead} {
		if _, err := log.ReadAtIntent(context.Background(), in, buf, 2); err != nil || string(buf) != "2345" {
			t.Fatalf("ReadAtIntent(%+v): %q, %v", in, buf, err)
		}
	}
	if _, err := ReplayReader(log).ReadAt(buf, 4); err != nil || string(buf) != "4567" {
		t.Fatalf("replay view: %q, %v", buf, err)
	}
	if _, err := log.Direct().ReadAtIntent(context.Background(), blobio.Background, buf, 8); err != nil || string(buf) != "89ab" {
		t.Fatalf("the remote side through openLog and swapBlob: %q, %v", buf, err)
	}
	want := []blobio.Intent{blobio.Demand, blobio.Exact, blobio.Background, blobio.ReadAhead, blobio.Background, blobio.Background}
	if got := rb.seen(); len(got) != len(want) {
		t.Fatalf("intents seen by the remote blob %+v, want %+v", got, want)
	} else {
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("intents seen by the remote blob %+v, want %+v", got, want)
			}
		}
	}
	if err := ReplayReader(log).Evict(3, 5); err != nil || len(evicted) != 1 || evicted[0] != [2]int64{3, 5} {
		t.Fatalf("Evict through the replay view and openLog: %v, evicted %v", err, evicted)
	}
	if n, err := log.evictRead(); err != nil || n != 6 || len(evicted) != 2 || evicted[1] != [2]int64{2, 6} {
		t.Fatalf("openLog recorded the reads with an intent: evicted %d bytes %v, %v", n, evicted, err)
	}

	local := filepath.Join(t.TempDir(), "copy")
	if err := os.WriteFile(local, []byte("ABCDEFGHIJKLMNOP"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.switchTo(local); err != nil {
		t.Fatal(err)
	}
	if _, err := ReplayReader(s).ReadAt(buf, 0); err != nil || string(buf) != "ABCD" {
		t.Fatalf("replay view after the swap: %q, %v", buf, err)
	}
	if n := len(rb.seen()); n != len(want) {
		t.Errorf("a read with an intent went remote after the swap (%d reads)", n-len(want))
	}
}

// A remote blob without a cache says so (blobio.ErrNotEvictable) through every
// wrapper, until reads are local.
func TestRemoteBlobNotEvictable(t *testing.T) {
	s := newSwapBlob(remoteOf(&plainBlob{data: make([]byte, 16)}))
	defer s.Close()
	for name, ev := range map[string]blobio.Evicter{"swapBlob": s, "openLog": &openLog{swapBlob: s}, "replay view": ReplayReader(s)} {
		if err := ev.Evict(0, 4); !errors.Is(err, blobio.ErrNotEvictable) {
			t.Errorf("%s: Evict = %v, want ErrNotEvictable", name, err)
		}
	}
}

type plainBlob struct{ data []byte }

func (b *plainBlob) Size() int64  { return int64(len(b.data)) }
func (b *plainBlob) Close() error { return nil }
func (b *plainBlob) ReadAt(p []byte, off int64) (int, error) {
	return copy(p, b.data[off:]), nil
}

type evictRecorder struct {
	data    []byte
	evicted *[][2]int64
}

func (b *evictRecorder) Size() int64  { return int64(len(b.data)) }
func (b *evictRecorder) Close() error { return nil }
func (b *evictRecorder) ReadAt(p []byte, off int64) (int, error) {
	return copy(p, b.data[off:]), nil
}
func (b *evictRecorder) Evict(off, n int64) error {
	*b.evicted = append(*b.evicted, [2]int64{off, n})
	return nil
}
