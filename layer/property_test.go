package layer

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
)

// TestPropertyCompressedStack writes random 512-aligned extents and discards into
// three writable layers (against an in-memory model of the disk), commits each
// through every encoding (ZFile LZ4/zstd at several block sizes, with and without the
// tar wrapper), opens the blobs with Open and checks the stacked disk — alone and
// under a fresh writable upper — reads back exactly as the model.
func TestPropertyCompressedStack(t *testing.T) {
	const size = 8 << 20
	rng := rand.New(rand.NewPCG(7, 11))
	model := make([]byte, size)
	encodings := []struct {
		alg zfile.Algorithm
		bs  int
		tar bool
	}{{zfile.LZ4, 4096, true}, {zfile.Zstd, 16384, false}, {zfile.LZ4, 65536, false}, {zfile.Zstd, 4096, true}, {0, 0, true}}
	dir := t.TempDir()
	var layers []*lsmt.Layer
	for li := 0; li < 3; li++ {
		data, _ := os.Create(filepath.Join(dir, fmt.Sprintf("d%d", li)))
		index, _ := os.Create(filepath.Join(dir, fmt.Sprintf("i%d", li)))
		w, err := lsmt.Create(data, index, lsmt.CreateOptions{VirtualSize: size})
		if err != nil {
			t.Fatal(err)
		}
		for op := 0; op < 150; op++ {
			off := rng.Int64N(size/512) * 512
			n := min((rng.Int64N(256)+1)*512, size-off)
			if rng.IntN(4) == 0 {
				if err := w.Discard(off, n); err != nil {
					t.Fatal(err)
				}
				clear(model[off : off+n])
				continue
			}
			buf := make([]byte, n)
			for i := range buf {
				if i%64 < 40 { // partly compressible
					buf[i] = byte(rng.Uint32())
				}
			}
			if _, err := w.WriteAt(buf, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], buf)
		}
		src := w.CommitSource()
		var keep *lsmt.Layer
		for ei, e := range encodings {
			blob := encode(t, src, e.alg, e.bs, e.tar)
			l, wr, err := Open(bytes.NewReader(blob), int64(len(blob)), "prop")
			if err != nil {
				t.Fatalf("layer %d encoding %d: %v", li, ei, err)
			}
			if (wr.ZFile != nil) != (e.alg != 0) || wr.Tar != e.tar {
				t.Fatalf("layer %d encoding %d: wrapping %v", li, ei, wr.Chain())
			}
			// Every encoding of this layer over the layers below equals the model.
			im, err := lsmt.NewImage(append(layers[:li:li], l), nil)
			if err != nil {
				t.Fatal(err)
			}
			checkModel(t, im, model, fmt.Sprintf("layer %d, encoding %d", li, ei))
			if ei == li%len(encodings) { // one encoding per layer stays in the stack
				keep = l
			}
		}
		layers = append(layers, keep)
		w.Close()
	}
	// A fresh writable upper over the stack: writes land on top, the rest reads through.
	ud, _ := os.Create(filepath.Join(dir, "ud"))
	ui, _ := os.Create(filepath.Join(dir, "ui"))
	up, err := lsmt.Create(ud, ui, lsmt.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	im, err := lsmt.NewImage(layers, up)
	if err != nil {
		t.Fatal(err)
	}
	for op := 0; op < 50; op++ {
		off := rng.Int64N(size/512) * 512
		n := min((rng.Int64N(64)+1)*512, size-off)
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := im.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], buf)
	}
	checkModel(t, im, model, "stack + upper")
	up.Close()
}

func encode(t *testing.T, src lsmt.Source, alg zfile.Algorithm, bs int, tar bool) []byte {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "blob")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var w io.Writer = f
	var closers []io.Closer
	if tar {
		tw, err := tarwrap.NewStreamWriter(f)
		if err != nil {
			t.Fatal(err)
		}
		w, closers = tw, append(closers, tw)
	}
	if alg != 0 {
		zw, err := zfile.NewWriter(w, zfile.Options{Algorithm: alg, BlockSize: bs})
		if err != nil {
			t.Fatal(err)
		}
		w, closers = zw, append(closers, zw)
	}
	bw := bufio.NewWriter(w)
	if err := lsmt.Commit(bw, src, lsmt.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i].Close(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkModel(t *testing.T, im *lsmt.Image, model []byte, what string) {
	t.Helper()
	got := make([]byte, len(model))
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !bytes.Equal(got, model) {
		for i := range got {
			if got[i] != model[i] {
				t.Fatalf("%s: first difference at byte %d", what, i)
			}
		}
	}
	// Unaligned random reads too.
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 200; i++ {
		off := rng.Int64N(int64(len(model)))
		n := min(rng.Int64N(300000)+1, int64(len(model))-off)
		p := make([]byte, n)
		if _, err := im.ReadAt(p, off); err != nil {
			t.Fatalf("%s: ReadAt(%d, %d): %v", what, off, n, err)
		}
		if !bytes.Equal(p, model[off:off+n]) {
			t.Fatalf("%s: ReadAt(%d, %d) differs", what, off, n)
		}
	}
}
