package p2p

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// slowSource serves a pattern after a delay (a slow registry) and counts reads.
type slowSource struct {
	size  int64
	delay time.Duration
	reads atomic.Int64
}

func (s *slowSource) Size() int64 { return s.size }
func (s *slowSource) ReadAtIntent(_ context.Context, _ blobio.Intent, p []byte, off int64) (int, error) {
	s.reads.Add(1)
	time.Sleep(s.delay)
	for i := range p {
		p[i] = byte((off + int64(i)) * 7)
	}
	return len(p), nil
}

// TestPeerWaitsForSlowOwner: the owner's registry fetch takes several times
// the requester's silence timeout; the owner's heartbeats keep the requester
// waiting for it, so the chunk comes from the owner and the requester never
// fetches it from the registry itself (which would be a second registry fetch
// of the chunk for the fleet).
func TestPeerWaitsForSlowOwner(t *testing.T) {
	const us = 64 << 10
	ca, err := cache.Open(t.TempDir(), cache.Options{RefillSize: us, MaxFetchSize: us, ReadAhead: -1, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ownerReg := &slowSource{size: 16 * us, delay: 600 * time.Millisecond}
	srv, err := NewServer(ServerOptions{Cache: ca, Token: "secret", Logger: zap.NewNop(), Heartbeat: 50 * time.Millisecond,
		Open: func(string, string, int64) (cache.Source, error) { return ownerReg, nil }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	owner := strings.TrimPrefix(hs.URL, "http://")
	const self = "127.0.0.1:1" // the requester (serves nothing)
	set, err := NewPeerSet(self, []string{owner, self}, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientOptions{Peers: set, Token: "secret", ChunkSize: us, Timeout: 150 * time.Millisecond, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := digestOf(7)
	// A chunk the other node owns.
	chunk := int64(-1)
	for k := int64(0); k < 16; k++ {
		if set.Ranked(ChunkKey(d, k))[0] == "http://"+owner {
			chunk = k
			break
		}
	}
	if chunk < 0 {
		t.Fatal("the other node owns none of 16 chunks")
	}
	ownReg := &slowSource{size: 16 * us}
	src := c.Source(d, "http://127.0.0.1:1/v2/r/blobs/"+d, ownReg)
	got := make([]byte, us)
	if _, err := src.ReadAt(got, chunk*us); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, us)
	ownReg.ReadAtIntent(context.Background(), blobio.Demand, want, chunk*us)
	if !bytes.Equal(got, want) {
		t.Error("wrong bytes")
	}
	if n := ownReg.reads.Load(); n != 1 { // 1: the read for want above
		t.Errorf("the requester read the chunk from the registry itself (%d reads): it gave up on the owner", n-1)
	}
	if n := ownerReg.reads.Load(); n != 1 {
		t.Errorf("the owner read the registry %d times, want 1", n)
	}
	if set.Penalised("http://" + owner) {
		t.Error("the slow owner was penalised")
	}
}
