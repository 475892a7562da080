package lsmt

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

const propSize = 16 << 20

// One random workload, read back through every path that must preserve it.
func TestPropertyWritableCommitSeal(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		name := "append"
		if sparse {
			name = "sparse"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			r := rand.New(rand.NewPCG(42, 0))
			model := make([]byte, propSize)
			w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: propSize, Sparse: sparse})
			applyRandomOps(t, r, model, 400, w)
			checkReads(t, "writable", w, model)

			w = reopenWritable(t, dir, "l", w)
			checkReads(t, "reopened", w, model)
			// Keep writing after the replay: appends must land after the old data/records.
			applyRandomOps(t, r, model, 100, w)
			w = reopenWritable(t, dir, "l", w)
			checkReads(t, "reopened twice", w, model)

			l := commitToLayer(t, filepath.Join(dir, "commit"), w.CommitSource(), CommitOptions{})
			im, err := NewImage([]*Layer{l}, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, "commit", im, model)

			if err := w.CloseSeal([]byte("sealed")); err != nil {
				t.Fatal(err)
			}
			sl := openLayerPath(t, filepath.Join(dir, "l.data"))
			if sl.Trailer().Flags&^FlagSparse != flagsSealedTrailer || sl.Header().IsSealed() {
				t.Errorf("sealed flags: header 0x%x trailer 0x%x", sl.Header().Flags, sl.Trailer().Flags)
			}
			if sparse != sl.Trailer().IsSparse() {
				t.Errorf("trailer sparse bit 0x%x", sl.Trailer().Flags)
			}
			if string(sl.UserTag()) != "sealed" || sl.UUID() != w.Header().UUID {
				t.Errorf("sealed tag %q uuid %s", sl.UserTag(), sl.UUID())
			}
			im, err = NewImage([]*Layer{sl}, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, "close_seal", im, model)
		})
	}
}

// A 3-layer stack with a writable upper, its flatten (commit of the whole stack) and
// a stack of the flattened layer under a new empty upper.
func TestPropertyStack(t *testing.T) {
	st := newRandomStack(t, 4, propSize, 250, 3)
	im := st.image(t, true)
	checkReads(t, "stack+rw", im, st.model)

	// More writes through the stacked view.
	r := rand.New(rand.NewPCG(99, 0))
	applyRandomOps(t, r, st.model, 100, im)
	checkReads(t, "stack+rw after writes", im, st.model)

	dir := t.TempDir()
	src, err := im.CommitSource()
	if err != nil {
		t.Fatal(err)
	}
	flat := commitToLayer(t, filepath.Join(dir, "flat"), src, CommitOptions{})
	fim, err := NewImage([]*Layer{flat}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkReads(t, "flatten", fim, st.model)

	// Merge of the read-only lowers only equals the stack without the upper.
	lowerOnly := make([]byte, propSize)
	if _, err := st.image(t, false).ReadAt(lowerOnly, 0); err != nil {
		t.Fatal(err)
	}
	src, err = st.image(t, false).CommitSource()
	if err != nil {
		t.Fatal(err)
	}
	merged := commitToLayer(t, filepath.Join(dir, "merged"), src, CommitOptions{})
	mim, err := NewImage([]*Layer{merged}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkReads(t, "merge", mim, lowerOnly)

	// A new upper of size 0 inherits the lower size.
	up := newWritableFiles(t, dir, "up", CreateOptions{})
	defer up.Close()
	im2, err := NewImage([]*Layer{merged, flat}, up)
	if err != nil {
		t.Fatal(err)
	}
	if im2.Size() != propSize || up.VirtualSize() != propSize {
		t.Fatalf("inherited size %d/%d", im2.Size(), up.VirtualSize())
	}
	checkReads(t, "new upper over flatten", im2, st.model)
}

// A torn last index record (crash mid-append) is ignored, never fatal.
func TestReplayTornRecord(t *testing.T) {
	dir := t.TempDir()
	model := make([]byte, 1<<20)
	w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: 1 << 20})
	applyRandomOps(t, rand.New(rand.NewPCG(5, 5)), model, 50, w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// The last write, whose record we tear.
	data, _ := os.OpenFile(filepath.Join(dir, "l.data"), os.O_RDWR, 0)
	index, _ := os.OpenFile(filepath.Join(dir, "l.index"), os.O_RDWR, 0)
	w, err := OpenWritable(data, index)
	if err != nil {
		t.Fatal(err)
	}
	before := append([]byte(nil), model...)
	p := make([]byte, 4096)
	fillRandom(rand.New(rand.NewPCG(6, 6)), p)
	if _, err := w.WriteAt(p, 8192); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ip := filepath.Join(dir, "l.index")
	st, _ := os.Stat(ip)
	if err := os.Truncate(ip, st.Size()-7); err != nil {
		t.Fatal(err)
	}
	w = reopenWritableFromDisk(t, dir)
	checkReads(t, "torn record ignored", w, before)
	// The next write overwrites the torn record and survives a reopen.
	if _, err := w.WriteAt(p, 8192); err != nil {
		t.Fatal(err)
	}
	copy(before[8192:], p)
	w = reopenWritable(t, dir, "l", w)
	checkReads(t, "after rewrite", w, before)
	w.Close()
}

func reopenWritableFromDisk(t *testing.T, dir string) *Writable {
	t.Helper()
	data, _ := os.OpenFile(filepath.Join(dir, "l.data"), os.O_RDWR, 0)
	index, _ := os.OpenFile(filepath.Join(dir, "l.index"), os.O_RDWR, 0)
	w, err := OpenWritable(data, index)
	if err != nil {
		t.Fatal(err)
	}
	return w
}
