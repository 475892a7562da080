package lsmt

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// newWritableFiles creates a writable layer in dir (name.data / name.index).
func newWritableFiles(tb testing.TB, dir, name string, opts CreateOptions) *Writable {
	tb.Helper()
	data, err := os.OpenFile(filepath.Join(dir, name+".data"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	var index *os.File
	if !opts.Sparse {
		if index, err = os.OpenFile(filepath.Join(dir, name+".index"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	w, err := Create(data, index, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

// reopenWritable closes w and opens its files again (index-log replay).
func reopenWritable(tb testing.TB, dir, name string, w *Writable) *Writable {
	tb.Helper()
	sparse := w.Sparse()
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	data, err := os.OpenFile(filepath.Join(dir, name+".data"), os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var index *os.File
	if !sparse {
		if index, err = os.OpenFile(filepath.Join(dir, name+".index"), os.O_RDWR, 0); err != nil {
			tb.Fatal(err)
		}
	}
	w, err = OpenWritable(data, index)
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

// openLayerPath opens a sealed layer file; the file is closed at test end.
func openLayerPath(tb testing.TB, path string) *Layer {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	l, err := OpenLayer(f, st.Size())
	if err != nil {
		tb.Fatalf("OpenLayer(%s): %v", path, err)
	}
	return l
}

// commitToLayer commits src into path and opens the result.
func commitToLayer(tb testing.TB, path string, src Source, opts CommitOptions) *Layer {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := Commit(f, src, opts); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return openLayerPath(tb, path)
}

type writeDiscarder interface {
	WriteAt(p []byte, off int64) (int, error)
	Discard(off, length int64) error
}

// applyRandomOps does n random 512-aligned writes (<= 128 KiB) and ~25% discards on
// each of ws and on model, the reference byte array. Now and then a write or discard
// is large enough to be split (> 4 MiB, > 16383 sectors).
func applyRandomOps(tb testing.TB, r *rand.Rand, model []byte, n int, ws ...writeDiscarder) {
	tb.Helper()
	sectors := len(model) / SectorSize
	for i := 0; i < n; i++ {
		maxLen := 256
		if r.IntN(50) == 0 {
			maxLen = 2 * MaxLength
		}
		l := 1 + r.IntN(min(maxLen, sectors))
		off := r.IntN(sectors - l + 1)
		bo, bl := int64(off)*SectorSize, int64(l)*SectorSize
		if r.IntN(4) == 0 {
			clear(model[bo : bo+bl])
			for _, w := range ws {
				if err := w.Discard(bo, bl); err != nil {
					tb.Fatal(err)
				}
			}
			continue
		}
		p := model[bo : bo+bl]
		fillRandom(r, p)
		for _, w := range ws {
			if _, err := w.WriteAt(p, bo); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

func fillRandom(r *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// checkReads compares r with model: the whole range in 1 MiB reads plus random
// unaligned reads.
func checkReads(tb testing.TB, what string, r io.ReaderAt, model []byte) {
	tb.Helper()
	buf := make([]byte, 1<<20)
	for off := 0; off < len(model); off += len(buf) {
		n := min(len(buf), len(model)-off)
		if _, err := r.ReadAt(buf[:n], int64(off)); err != nil {
			tb.Fatalf("%s: ReadAt(%d): %v", what, off, err)
		}
		if !bytes.Equal(buf[:n], model[off:off+n]) {
			tb.Fatalf("%s: data differs in [%d, %d) at %d", what, off, off+n, off+firstDiff(buf[:n], model[off:off+n]))
		}
	}
	rr := rand.New(rand.NewPCG(uint64(len(model)), 9))
	for i := 0; i < 100; i++ {
		off := rr.IntN(len(model))
		n := rr.IntN(min(len(model)-off, 300_000) + 1)
		if _, err := r.ReadAt(buf[:n], int64(off)); err != nil {
			tb.Fatalf("%s: ReadAt(%d, len %d): %v", what, off, n, err)
		}
		if !bytes.Equal(buf[:n], model[off:off+n]) {
			tb.Fatalf("%s: unaligned read [%d, +%d) differs at %d", what, off, n, off+firstDiff(buf[:n], model[off:off+n]))
		}
	}
}

// randomStack is a stack of committed random layers under a writable upper with
// random contents, and the model of the whole disk.
type randomStack struct {
	lowers []*Layer
	upper  *Writable
	model  []byte
}

func newRandomStack(tb testing.TB, layers, size, ops int, seed uint64) *randomStack {
	tb.Helper()
	dir := tb.TempDir()
	r := rand.New(rand.NewPCG(seed, 1))
	st := &randomStack{model: make([]byte, size)}
	for i := 0; i < layers; i++ {
		name := string(rune('a' + i))
		w := newWritableFiles(tb, dir, name, CreateOptions{VirtualSize: uint64(size)})
		applyRandomOps(tb, r, st.model, ops, w)
		if i == layers-1 {
			st.upper = w
			tb.Cleanup(func() { w.Close() })
			break
		}
		st.lowers = append(st.lowers, commitToLayer(tb, filepath.Join(dir, name+".commit"), w.CommitSource(), CommitOptions{}))
		w.Close()
	}
	return st
}

func (st *randomStack) image(tb testing.TB, withUpper bool) *Image {
	tb.Helper()
	var u *Writable
	if withUpper {
		u = st.upper
	}
	im, err := NewImage(st.lowers, u)
	if err != nil {
		tb.Fatal(err)
	}
	return im
}
