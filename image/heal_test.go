package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
	"go.uber.org/zap"
)

// cachedFlipBlob is a remote blob whose byte at bad was flipped in transit and
// stored by the cache: every read returns the flipped byte until a range
// covering it is evicted, then the right one (the source is healthy again).
type cachedFlipBlob struct {
	data []byte
	mu   sync.Mutex
	bad  int64 // -1 once healed
	ev   int   // evictions covering bad
	// sticky: the source itself serves the bad byte, evictions do not heal it
	sticky bool
}

func (b *cachedFlipBlob) Size() int64  { return int64(len(b.data)) }
func (b *cachedFlipBlob) Close() error { return nil }
func (b *cachedFlipBlob) ReadAt(p []byte, off int64) (int, error) {
	n := copy(p, b.data[off:])
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bad >= off && b.bad < off+int64(n) {
		p[b.bad-off] ^= 0x10
	}
	return n, nil
}
func (b *cachedFlipBlob) Evict(off, n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bad >= off && b.bad < off+n {
		b.ev++
		if !b.sticky {
			b.bad = -1
		}
	}
	return nil
}

type flipRemote struct{ b *cachedFlipBlob }

func (r flipRemote) OpenBlob(context.Context, string, config.Layer) (RemoteBlob, error) {
	return remoteOf(r.b), nil
}

// metadataRegions names a byte in each metadata structure of blob: the tar
// headers, the ZFile header, trailer and jump table, the LSMT header, trailer and
// index (of an uncompressed LSMT file; inside a ZFile these are compressed blocks,
// which the ZFile block CRC already heals).
func metadataRegions(t *testing.T, blob []byte) map[string]int64 {
	t.Helper()
	_, _, w, err := layer.Unwrap(bytes.NewReader(blob), int64(len(blob)), "blob")
	if err != nil {
		t.Fatal(err)
	}
	rs := map[string]int64{}
	base := int64(0)
	if w.Tar {
		base = w.TarPayloadOffset
		rs["tar header"] = base - tarwrap.BlockSize + 100 // the file header's mode field
		rs["tar first block"] = 10
	}
	if z := w.ZFile; z != nil {
		info := z.Info()
		rs["zfile header"] = base + 40 // index_offset
		if info.Trailer != nil && !info.Header.Has(zfile.FlagHeaderOverwrite) {
			rs["zfile trailer"] = base + info.FileSize - zfile.HeaderSize + 40
		}
		rs["zfile jump table"] = base + info.IndexOffset + 8
		return rs
	}
	l, err := lsmt.OpenLayer(bytes.NewReader(blob[base:]), int64(len(blob))-base)
	if err != nil {
		t.Fatal(err)
	}
	rs["lsmt header magic"] = base + 3
	rs["lsmt trailer flags"] = base + int64(len(blob)) - lsmt.HeaderSize + 32
	// The high byte of entry 0's moffset: the entry then points past the data.
	rs["lsmt index entry"] = base + int64(l.Trailer().IndexOffset) + 14
	return rs
}

// A corrupted tar header, ZFile header, trailer or jump table, or LSMT header,
// trailer or index that a registry or peer delivered into the cache is evicted
// and fetched again: the attach succeeds and every byte reads right.
func TestCorruptMetadataRefetched(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(bstack, "b0.commit")) // uncompressed LSMT
	if err != nil {
		t.Fatal(err)
	}
	zf, err := os.ReadFile(filepath.Join(bstack, "merged.lz4.zfile"))
	if err != nil {
		t.Fatal(err)
	}
	tarred := append(append(tarwrap.Header(int64(len(zf))), zf...), tarwrap.Trailer(int64(len(zf)))...)
	for name, blob := range map[string][]byte{"lsmt": raw, "zfile": zf, "tar+zfile": tarred} {
		want := readLayer(t, blob)
		for region, off := range metadataRegions(t, blob) {
			t.Run(name+"/"+region, func(t *testing.T) {
				b := &cachedFlipBlob{data: blob, bad: off}
				cfg := &config.ImageConfig{RepoBlobURL: "https://example.invalid/v2/r/blobs",
					Lowers: []config.Layer{{Digest: "sha256:" + fmt.Sprintf("%064x", 1), Size: uint64(len(blob))}}}
				im, err := Open(context.Background(), cfg, Options{Remote: flipRemote{b}, Logger: zap.NewNop()})
				if err != nil {
					t.Fatalf("attach with a corrupted %s at %d: %v", region, off, err)
				}
				defer im.Close()
				if b.ev != 1 {
					t.Errorf("%d evictions of the corrupted byte, want 1", b.ev)
				}
				for _, e := range want {
					got := make([]byte, len(e.data))
					if _, err := im.ReadAt(got, e.off); err != nil {
						t.Fatalf("read at %d: %v", e.off, err)
					}
					if !bytes.Equal(got, e.data) {
						t.Fatalf("wrong bytes at %d", e.off)
					}
				}
			})
		}
	}
}

type extent struct {
	off  int64
	data []byte
}

// readLayer returns every mapped extent of the layer blob, read from a clean copy.
func readLayer(t *testing.T, blob []byte) []extent {
	t.Helper()
	l, _, err := layer.Open(bytes.NewReader(blob), int64(len(blob)), "truth")
	if err != nil {
		t.Fatal(err)
	}
	st, err := lsmt.NewImage([]*lsmt.Layer{l}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []extent
	for _, s := range l.Segments() {
		e := extent{off: int64(s.Offset) * 512, data: make([]byte, int64(s.Length)*512)}
		if _, err := st.ReadAt(e.data, e.off); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		t.Fatal("no extents")
	}
	return out
}

// A blob whose source itself is corrupt is fetched a bounded number of times,
// then the attach fails with the format error.
func TestCorruptMetadataBoundedTries(t *testing.T) {
	zf, err := os.ReadFile(filepath.Join(bstack, "merged.lz4.zfile"))
	if err != nil {
		t.Fatal(err)
	}
	b := &cachedFlipBlob{data: zf, bad: metadataRegions(t, zf)["zfile jump table"], sticky: true}
	cfg := &config.ImageConfig{RepoBlobURL: "https://example.invalid/v2/r/blobs",
		Lowers: []config.Layer{{Digest: "sha256:" + fmt.Sprintf("%064x", 1), Size: uint64(len(zf))}}}
	im, err := Open(context.Background(), cfg, Options{Remote: flipRemote{b}, Logger: zap.NewNop()})
	if err == nil {
		im.Close()
		t.Fatal("attach of a corrupt blob succeeded")
	}
	if !errors.Is(err, zfile.ErrFormat) {
		t.Errorf("error %v, want a zfile format error", err)
	}
	if b.ev != maxOpenTries-1 {
		t.Errorf("%d evictions, want %d (one per retry)", b.ev, maxOpenTries-1)
	}
}

// unavailableBlob fails every read at or past from, as a registry that is down
// (after its own retries); it counts evictions.
type unavailableBlob struct {
	cachedFlipBlob
	from    int64
	evicted int
}

func (b *unavailableBlob) Evict(off, n int64) error { b.evicted++; return nil }

func (b *unavailableBlob) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > b.from {
		return 0, errors.New("registry unavailable")
	}
	return b.cachedFlipBlob.ReadAt(p, off)
}

type unavailableRemote struct{ b *unavailableBlob }

func (r unavailableRemote) OpenBlob(context.Context, string, config.Layer) (RemoteBlob, error) {
	return remoteOf(r.b), nil
}

// An I/O error at open is not retried: the registry client has retried already,
// and opening again would only multiply the outage's delay.
func TestOpenIOErrorNotRetried(t *testing.T) {
	zf, err := os.ReadFile(filepath.Join(bstack, "merged.lz4.zfile"))
	if err != nil {
		t.Fatal(err)
	}
	b := &unavailableBlob{cachedFlipBlob: cachedFlipBlob{data: zf, bad: -1}, from: int64(len(zf)) - 4096}
	cfg := &config.ImageConfig{RepoBlobURL: "https://example.invalid/v2/r/blobs",
		Lowers: []config.Layer{{Digest: "sha256:" + fmt.Sprintf("%064x", 1), Size: uint64(len(zf))}}}
	im, err := Open(context.Background(), cfg, Options{Remote: unavailableRemote{b}, Logger: zap.NewNop()})
	if err == nil {
		im.Close()
		t.Fatal("attach succeeded with the registry down")
	}
	if b.evicted != 0 {
		t.Errorf("%d evictions for an I/O error: %v", b.evicted, err)
	}
}
