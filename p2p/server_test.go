package p2p

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// TestServerRefuses: bad token, bad digest, a URL naming another blob, ranges
// outside the blob or too large: refused before any fetch.
func TestServerRefuses(t *testing.T) {
	ca, err := cache.Open(t.TempDir(), cache.Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	opened := 0
	s, err := NewServer(ServerOptions{Cache: ca, Token: "secret", Logger: zap.NewNop(),
		Open: func(string, string, int64) (cache.Source, error) { opened++; return nil, http.ErrAbortHandler }})
	if err != nil {
		t.Fatal(err)
	}
	const d = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	ok := http.Header{"Authorization": {"Bearer secret"}, "Range": {"bytes=0-9"},
		HeaderBlobURL: {"http://127.0.0.1:1/v2/r/blobs/" + d}, HeaderBlobSize: {"100"}}
	for _, tc := range []struct {
		name, path, key, val string
		code                 int
	}{
		{"no token", blobPath + d, "Authorization", "", 401},
		{"wrong token", blobPath + d, "Authorization", "Bearer secreT", 401},
		{"bad digest", blobPath + "sha256:zz", "", "", 400},
		{"other blob", blobPath + d, HeaderBlobURL, "http://127.0.0.1:1/v2/r/blobs/sha256:1111111111111111111111111111111111111111111111111111111111111111", 400},
		{"bad size", blobPath + d, HeaderBlobSize, "-1", 400},
		{"oversize", blobPath + d, HeaderBlobSize, "1125899906842624", 400}, // 1 PiB
		{"past end", blobPath + d, "Range", "bytes=95-100", 416},
		{"two ranges", blobPath + d, "Range", "bytes=0-1,5-6", 416},
		{"huge", blobPath + d, "Range", "bytes=0-999999999", 416},
	} {
		r := httptest.NewRequest(http.MethodGet, tc.path, nil)
		r.Header = ok.Clone()
		if tc.key != "" {
			r.Header.Set(tc.key, tc.val)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != tc.code {
			t.Errorf("%s: HTTP %d, want %d", tc.name, w.Code, tc.code)
		}
	}
	if opened != 0 {
		t.Errorf("%d registry opens for refused requests", opened)
	}
}

// stallSource serves zeros; reads at or past stallFrom wait for release.
type stallSource struct {
	size, stallFrom int64
	release         chan struct{}
	stalled         chan struct{} // closed (once) when a read stalls
}

func (s *stallSource) Size() int64 { return s.size }
func (s *stallSource) ReadAtIntent(_ context.Context, _ blobio.Intent, p []byte, off int64) (int, error) {
	if off >= s.stallFrom {
		select {
		case <-s.stalled:
		default:
			close(s.stalled)
		}
		<-s.release
		return 0, errors.New("released")
	}
	clear(p)
	return len(p), nil
}

// A request whose fill hangs (a stalled registry) must not stall requests for
// other blobs, even when the server has to close blobs (it keeps at most
// maxOpenBlobs open) while it waits.
func TestServerCloseDoesNotStallOthers(t *testing.T) {
	const unit = 16 << 10
	ca, err := cache.Open(t.TempDir(), cache.Options{RefillSize: unit, MaxFetchSize: unit, ReadAhead: 4 * unit, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	release := make(chan struct{})
	defer close(release)
	first := &stallSource{size: 1 << 20, stallFrom: 3 * unit, release: release, stalled: make(chan struct{})}
	s, err := NewServer(ServerOptions{Cache: ca, Token: "secret", Logger: zap.NewNop(),
		Open: func(digest, _ string, size int64) (cache.Source, error) {
			if digest == digestOf(0) {
				return first, nil
			}
			return &stallSource{size: size, stallFrom: size, release: release}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(i int, off int64) int {
		d := digestOf(i)
		r := httptest.NewRequest(http.MethodGet, blobPath+d, nil)
		r.Header = http.Header{"Authorization": {"Bearer secret"}, "Range": {fmt.Sprintf("bytes=%d-%d", off, off+unit-1)},
			HeaderBlobURL: {"http://127.0.0.1:1/v2/r/blobs/" + d}, HeaderBlobSize: {"1048576"}}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w.Code
	}
	for u := int64(0); u < 3; u++ {
		if code := get(0, u*unit); code != http.StatusPartialContent {
			t.Fatalf("blob 0 chunk %d: HTTP %d", u, code)
		}
	}
	go get(0, 3*unit) // its fill hangs until the test ends
	select {
	case <-first.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the fill of blob 0 chunk 3 did not start")
	}
	// Enough other blobs to close blob 0, the least recently used, and more.
	done := make(chan int)
	go func() {
		for i := 1; i <= maxOpenBlobs+1; i++ {
			if code := get(i, 0); code != http.StatusPartialContent {
				done <- code
				return
			}
		}
		done <- http.StatusPartialContent
	}()
	select {
	case code := <-done:
		if code != http.StatusPartialContent {
			t.Fatalf("HTTP %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("requests for other blobs stalled while the server closed a blob with a hung fill")
	}
}

func digestOf(i int) string { return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte{byte(i)})) }

// recordSource serves zeros and records the offsets and intents it is asked for.
type recordSource struct {
	size int64
	mu   sync.Mutex
	offs []int64
	ins  []blobio.Intent
}

func (s *recordSource) Size() int64 { return s.size }
func (s *recordSource) ReadAtIntent(_ context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	s.mu.Lock()
	s.offs, s.ins = append(s.offs, off), append(s.ins, in)
	s.mu.Unlock()
	clear(p)
	return len(p), nil
}

// TestServerNoReadAhead: a peer asking for consecutive chunks (its reader
// streams, or several peers ask one after another) gets exactly those chunks;
// the server's cache does not read ahead of them, which would fetch chunks
// nobody asked for from the registry (each node reads ahead for its own reader).
func TestServerNoReadAhead(t *testing.T) {
	const us = 256 << 10
	ca, err := cache.Open(t.TempDir(), cache.Options{RefillSize: us, MaxFetchSize: us, ReadAhead: 8 << 20, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	src := &recordSource{size: 64 * us}
	s, err := NewServer(ServerOptions{Cache: ca, Token: "secret", Logger: zap.NewNop(),
		Open: func(string, string, int64) (cache.Source, error) { return src, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const d = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for c := int64(0); c < 6; c++ {
		r := httptest.NewRequest(http.MethodGet, blobPath+d, nil)
		r.Header = http.Header{"Authorization": {"Bearer secret"}, "Range": {fmt.Sprintf("bytes=%d-%d", c*us, (c+1)*us-1)},
			HeaderBlobURL: {"http://127.0.0.1:1/v2/r/blobs/" + d}, HeaderBlobSize: {fmt.Sprint(src.size)}}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != http.StatusPartialContent {
			t.Fatalf("chunk %d: HTTP %d", c, w.Code)
		}
	}
	s.Close() // waits for fills (read-ahead included)
	src.mu.Lock()
	defer src.mu.Unlock()
	if len(src.offs) != 6 {
		t.Errorf("6 chunks asked, the source was read at %v (read-ahead beyond what peers asked)", src.offs)
	}
}
