package remote

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/registry/registrytest"
)

// Pull fetches every blob whole and verifies it; a second pull fetches nothing;
// with the registry down the pulled reference still resolves and every byte reads.
func TestPullThenRegistryDown(t *testing.T) {
	reg := registrytest.New(t)
	g := registrytest.OverlaybdImage(t, 11, 5<<20+17, 3<<20, 100<<10)
	reg.PushImage(t, "p", "v1", g.Image)
	front := registrytest.NewCountingProxy(t, reg.URL)
	ref := front.Host() + "/p:v1"
	dir := t.TempDir()
	op := newOpener(t, dir, cache.Options{})
	var last, total int64
	res, err := op.Pull(context.Background(), ref, PullOptions{ChunkSize: 1 << 20, Progress: func(d, tot int64) { last, total = d, tot }})
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	for _, b := range g.Blobs {
		size += int64(len(b))
	}
	if res.Layers != 3 || res.Bytes != size || res.Fetched != size || last != size || total != size {
		t.Fatalf("pull: %+v, progress %d/%d; want 3 layers, %d bytes fetched once", res, last, total, size)
	}
	again, err := op.Pull(context.Background(), ref, PullOptions{})
	if err != nil || again.Fetched != 0 {
		t.Fatalf("second pull: fetched %d, %v; want 0", again.Fetched, err)
	}
	op.Close()
	front.Close() // the registry is down
	op = newOpener(t, dir, cache.Options{})
	defer op.Close()
	cfg, err := op.Config(context.Background(), ref)
	if err != nil {
		t.Fatalf("resolve a pulled image with the registry down: %v", err)
	}
	for i, l := range cfg.Lowers {
		u, _ := cfg.BlobURL(l.Digest)
		b, err := op.OpenBlob(context.Background(), u, l)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		got := make([]byte, l.Size)
		if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, g.Blobs[i]) {
			t.Errorf("layer %d: wrong bytes or %v", i, err)
		}
		b.Close()
	}
	// Another reference, never pulled, does not resolve.
	if _, err := op.Config(context.Background(), strings.Replace(ref, ":v1", ":v2", 1)); err == nil {
		t.Error("an image never pulled resolved with the registry down")
	}
}

// --blobs-only keeps no image record: with the registry down the reference does
// not resolve, though every blob is cached.
func TestPullBlobsOnly(t *testing.T) {
	reg := registrytest.New(t)
	g := registrytest.OverlaybdImage(t, 12, 1<<20)
	reg.PushImage(t, "p", "v1", g.Image)
	front := registrytest.NewCountingProxy(t, reg.URL)
	ref := front.Host() + "/p:v1"
	dir := t.TempDir()
	op := newOpener(t, dir, cache.Options{})
	defer op.Close()
	res, err := op.Pull(context.Background(), ref, PullOptions{BlobsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Config.Lowers[0]
	if !op.cache.Complete(l.Digest, int64(l.Size)) {
		t.Fatal("blob not cached")
	}
	front.Close()
	if _, err := op.Config(context.Background(), ref); err == nil {
		t.Error("a --blobs-only pull resolved offline")
	}
}

// A registry serving other bytes under the digest fails the pull with a digest
// mismatch, and the bad bytes are dropped from the cache.
func TestPullRejectsTamperedBlob(t *testing.T) {
	reg := registrytest.New(t)
	g := registrytest.OverlaybdImage(t, 13, 2<<20)
	reg.PushImage(t, "p", "v1", g.Image)
	p := registrytest.NewFaultProxy(t, reg.URL)
	p.SetPlan(registrytest.Always(registrytest.ChangedBlob))
	op := newOpener(t, t.TempDir(), cache.Options{})
	defer op.Close()
	res, err := op.Pull(context.Background(), p.Host+"/p:v1", PullOptions{})
	if err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("tampered pull: %v", err)
	}
	l := res.Config.Lowers[0]
	if op.cache.Complete(l.Digest, int64(l.Size)) {
		t.Error("tampered blob left complete in the cache")
	}
}

// An interrupted pull resumes: the second pull fetches only what is missing.
func TestPullResumes(t *testing.T) {
	reg := registrytest.New(t)
	g := registrytest.OverlaybdImage(t, 14, 8<<20)
	reg.PushImage(t, "p", "v1", g.Image)
	op := newOpener(t, t.TempDir(), cache.Options{ReadAhead: -1}) // read-ahead would finish the blob anyway
	defer op.Close()
	ctx, cancel := context.WithCancel(context.Background())
	_, err := op.Pull(ctx, reg.Host+"/p:v1", PullOptions{Parallel: 1, ChunkSize: 1 << 20, Progress: func(d, tot int64) {
		if d >= tot/2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted pull: %v", err)
	}
	res, err := op.Pull(context.Background(), reg.Host+"/p:v1", PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fetched <= 0 || res.Fetched > res.Bytes/2+(1<<20) {
		t.Errorf("resumed pull fetched %d of %d bytes; want about half", res.Fetched, res.Bytes)
	}
}
