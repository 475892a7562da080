package p2p

import (
	"context"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// Every wrapper of a registry source in peer mode is a full cache.Source.
var (
	_ cache.Source = (*Source)(nil)
	_ cache.Source = (*limited)(nil)
	_ cache.Source = (*closingSource)(nil)
)

// A chunk no peer serves is read from the registry with the intent of the read
// (through the client's registry limit).
func TestPeerSourceForwardsIntentToRegistry(t *testing.T) {
	const us = 64 << 10
	const self = "127.0.0.1:1"
	set, err := NewPeerSet(self, []string{self}, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientOptions{Peers: set, Token: "secret", ChunkSize: us, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reg := &recordSource{size: 4 * us}
	src := c.Source("sha256:00", "https://r.invalid/v2/x/blobs/sha256:0", reg)
	buf := make([]byte, us)
	if _, err := src.ReadAtIntent(context.Background(), blobio.Background, buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := src.ReadAt(buf, us); err != nil {
		t.Fatal(err)
	}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if len(reg.ins) != 2 || reg.ins[0] != blobio.Background || reg.ins[1] != blobio.Demand {
		t.Fatalf("intents at the registry %+v, want [Background Demand]", reg.ins)
	}
}
