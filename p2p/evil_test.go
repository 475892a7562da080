package p2p_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry/registrytest"
	"github.com/obd-project/obd/zfile"
)

// TestBadPeer: a peer answers with perfect framing but one flipped bit per
// chunk. The ZFile CRCs catch it, the cache evicts, the peer is penalised and
// the chunk comes from the registry: every byte read is right.
func TestBadPeer(t *testing.T) {
	plain := make([]byte, 12<<20)
	copy(plain, randomData(11, 6<<20)) // half random, half zeros: several chunks either way
	var z bytes.Buffer
	if _, err := zfile.Compress(&z, bytes.NewReader(plain), zfile.Options{Workers: 1}); err != nil {
		t.Fatal(err)
	}
	blob := z.Bytes()
	reg := registrytest.New(t)
	l := pushBlob(t, reg, "evil/app", blob)

	var asked, flipped atomic.Int64
	lastChunk := (int64(len(blob)) - 1) / unit
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		var first, last int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err != nil {
			http.Error(w, "range", http.StatusBadRequest)
			return
		}
		b := append([]byte(nil), blob[first:last+1]...)
		// Spare the first and last chunk (ZFile header, index, trailer): their
		// corruption is a format error at open, not a CRC failure to heal.
		if c := first / unit; c > 0 && c < lastChunk {
			b[len(b)/2] ^= 0x10
			flipped.Add(1)
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(blob)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(b)
	}))
	defer evil.Close()

	self := listen(t)
	self.Close() // this node's own server is not needed: it only reads
	m := p2p.NewMetrics()
	op := newOpener(t, t.TempDir(), config.P2PConfig{Enable: true, Mode: config.P2PModePeers, Token: "t",
		Peers: []string{strings.TrimPrefix(evil.URL, "http://"), self.Addr().String()}, Advertise: self.Addr().String()}, m)
	b := openBlob(t, op, reg.BlobURL("evil/app", l.Digest), l)
	zr, err := zfile.Open(b, b.Size())
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(plain))
	for off := 0; off < len(plain); off += 1 << 20 {
		if _, err := zr.ReadAt(got[off:off+1<<20], int64(off)); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("WRONG BYTES read through a peer that flips bits")
	}
	if flipped.Load() == 0 {
		t.Fatal("the bad peer corrupted nothing: the test tests nothing")
	}
	if bad := value(m.PeerErrors.WithLabelValues("bad-data")); bad == 0 {
		t.Errorf("bad peer not penalised: %d chunks corrupted, 0 bad-data errors", flipped.Load())
	}
	t.Logf("bad peer asked %d times, corrupted %d chunks; bad-data errors %.0f", asked.Load(), flipped.Load(),
		value(m.PeerErrors.WithLabelValues("bad-data")))
	// Penalised: it is not asked again for a while.
	before := asked.Load()
	zr2, err := zfile.Open(b, b.Size())
	if err != nil {
		t.Fatal(err)
	}
	b.(interface{ Evict(off, n int64) error }).Evict(0, b.Size()) // force refetching everything
	if _, err := zr2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("WRONG BYTES on the second pass")
	}
	if asked.Load() != before {
		t.Errorf("penalised peer asked %d more times", asked.Load()-before)
	}
}
