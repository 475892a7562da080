package p2p_test

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
	"github.com/obd-project/obd/remote"
	"github.com/obd-project/obd/trace"
	"go.uber.org/zap"
)

// TestDragonflyPriority: in Dragonfly mode, what a reader waits for goes to
// dfdaemon at the on-demand priority, and prefetching at the prefetch priority:
// the cache's read-ahead, trace replay's view (image.ReplayReader), the
// background download's source (RemoteBlob.Direct, read with download.ReadIntent)
// and obd pull.
func TestDragonflyPriority(t *testing.T) {
	reg := registrytest.New(t)
	g := registrytest.OverlaybdImage(t, 31, 6<<20)
	reg.PushImage(t, "prio", "v1", g.Image)
	ref := reg.Ref("prio:v1")
	df := newFakeDragonfly(t)
	onDemand, prefetch := strconv.Itoa(p2p.DefaultPriorityOnDemand), strconv.Itoa(p2p.DefaultPriorityPrefetch)
	open := func(readAhead int64) *remote.Opener {
		op, err := remote.NewOpener(remote.Options{
			Registry: registry.Options{Retry: fastRetry, Logger: zap.NewNop()},
			CacheDir: t.TempDir(), Cache: cache.Options{RefillSize: unit, ReadAhead: readAhead, Logger: zap.NewNop()},
			P2P:    config.P2PConfig{Enable: true, Mode: config.P2PModeDragonfly, Address: strings.TrimPrefix(df.URL, "http://")},
			Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(op.Close)
		return op
	}
	// priorities returns the X-Dragonfly-Priority of the blob requests dfdaemon
	// saw since request from (the count so far), and that count.
	priorities := func(from int) (map[string]int, int) {
		reqs := df.seen.all()
		got := map[string]int{}
		for _, r := range reqs[from:] {
			if strings.Contains(r.URL.Path, "/blobs/") {
				got[r.Header.Get(p2p.HeaderDragonflyPriority)]++
			}
		}
		return got, len(reqs)
	}
	read := func(r io.ReaderAt, off, n int64) {
		t.Helper()
		buf := make([]byte, n)
		if k, err := r.ReadAt(buf, off); k != int(n) || string(buf) != string(g.Blobs[0][off:off+n]) {
			t.Fatalf("read [%d, +%d): %d bytes, %v, or wrong bytes", off, n, k, err)
		}
	}

	// A pull prefetches everything (its first request finds out, directly, that
	// the registry serves the blob itself; the next ones go through dfdaemon).
	if _, err := open(-1).Pull(context.Background(), ref, remote.PullOptions{ChunkSize: 1 << 20, Parallel: 1}); err != nil {
		t.Fatal(err)
	}
	got, n := priorities(0)
	if got[prefetch] == 0 || len(got) != 1 {
		t.Errorf("obd pull: priorities %v; want all %s", got, prefetch)
	}

	op := open(2 << 20)
	cfg, _, err := op.ImageConfig(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := cfg.BlobURL(cfg.Lowers[0].Digest)
	b, err := op.OpenBlob(context.Background(), u, cfg.Lowers[0])
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, n = priorities(0) // OpenBlob's probe and its reads of head and tail

	// A sequential reader: its own reads on demand, the read-ahead as prefetch.
	for off := int64(0); off < 4*unit; off += unit {
		read(b, off, unit)
	}
	got, n = priorities(n)
	if got[onDemand] == 0 || got[prefetch] == 0 {
		t.Errorf("sequential reads with read-ahead: priorities %v; want both %s and %s", got, onDemand, prefetch)
	}

	// Trace replay's view and the download's source: prefetch only.
	read(image.ReplayReader(b), 4<<20+2*unit, unit)
	direct := make([]byte, unit)
	if k, err := b.Direct().ReadAtIntent(context.Background(), download.ReadIntent, direct, 4<<20); k != unit || string(direct) != string(g.Blobs[0][4<<20:4<<20+unit]) {
		t.Fatalf("download read [%d, +%d): %d bytes, %v, or wrong bytes", 4<<20, unit, k, err)
	}
	if got, n = priorities(n); got[prefetch] == 0 || len(got) != 1 {
		t.Errorf("replay and download reads: priorities %v; want all %s", got, prefetch)
	}

	// A random read (no stream): on demand.
	read(b, 3<<20+2*unit, 4096)
	if got, _ = priorities(n); got[onDemand] != 1 || len(got) != 1 {
		t.Errorf("a random read: priorities %v; want one %s", got, onDemand)
	}
}

// TestDragonflyPriorityTraceReplay: a trace replayed by image.Open reads its
// ranges through the layers' replay view (image.ReplayReader): dfdaemon sees them at the prefetch
// priority, while the image's own reads (opening the layer) stay on demand.
func TestDragonflyPriorityTraceReplay(t *testing.T) {
	reg := registrytest.New(t)
	// The ext4 base layer (4.5 MiB): a cold open fetches the head and the last
	// MiB of a blob this size, so that the replay has something left to fetch.
	reg.PushImage(t, "base", "v1", registrytest.LayersImage(t, goldenBase(t)))
	ref := reg.Ref("base:v1")
	// Replay the first 32 MiB of the layer's LSMT file.
	tr := filepath.Join(t.TempDir(), "trace")
	f, err := os.Create(tr)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.WriteTrace(f, []trace.Record{{Op: trace.OpRead, Layer: 0, Offset: 0, Count: 32 << 20}}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// attach opens the image on a cold cache (replaying tr if set) and returns the
	// priorities dfdaemon saw.
	attach := func(tr string) map[string]int {
		df := newFakeDragonfly(t)
		op, err := remote.NewOpener(remote.Options{
			Registry: registry.Options{Retry: fastRetry, Logger: zap.NewNop()},
			CacheDir: t.TempDir(), Cache: cache.Options{RefillSize: 16 << 10, ReadAhead: -1, Logger: zap.NewNop()},
			P2P:    config.P2PConfig{Enable: true, Mode: config.P2PModeDragonfly, Address: strings.TrimPrefix(df.URL, "http://")},
			Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer op.Close()
		cfg, err := op.Config(context.Background(), ref)
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.Lowers) != 1 {
			t.Fatalf("%d layers: the trace names layer 0 of 1", len(cfg.Lowers))
		}
		img, err := image.Open(context.Background(), cfg, image.Options{Remote: op, ReplayTrace: tr, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		if done := img.TraceDone(); done != nil {
			<-done
		}
		img.Close()
		got := map[string]int{}
		for _, r := range df.seen.all() {
			got[r.Header.Get(p2p.HeaderDragonflyPriority)]++
		}
		return got
	}
	onDemand, prefetch := strconv.Itoa(p2p.DefaultPriorityOnDemand), strconv.Itoa(p2p.DefaultPriorityPrefetch)
	plain := attach("")
	replayed := attach(tr)
	if plain[onDemand] == 0 || replayed[onDemand] != plain[onDemand] || replayed[prefetch] == 0 || len(replayed) != 2 {
		t.Errorf("priorities: opening the image %v, opening it and replaying a trace %v; want the replay's requests at %s, the rest at %s",
			plain, replayed, prefetch, onDemand)
	}
}

// goldenBase is the golden ext4 base layer (a ZFile).
func goldenBase(t *testing.T) []byte {
	t.Helper()
	f, err := os.Open("../testdata/golden/ext4_64.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("ext4_64 in ext4_64.tar.gz: %v", err)
		}
		if strings.HasSuffix(h.Name, "ext4_64") {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}
