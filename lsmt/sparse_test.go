package lsmt

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// A sparse upper over a lower: a 512-byte write must not turn the rest of its 4 KiB
// file-system block into zeros after a reopen, and a WRITE_ZEROES over lower data must
// not let the lower's bytes resurface (the audit's reproduction).
func TestSparseUpperReopenKeepsPartialBlocksAndZeroes(t *testing.T) {
	dir := t.TempDir()
	const vsize = 1 << 20
	lw := newWritableFiles(t, dir, "lower", CreateOptions{VirtualSize: vsize})
	if _, err := lw.WriteAt(bytes.Repeat([]byte{0xAA}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	lower := commitToLayer(t, filepath.Join(dir, "lower.lsmt"), lw.CommitSource(), CommitOptions{})
	lw.Close()

	up := newWritableFiles(t, dir, "upper", CreateOptions{VirtualSize: vsize, Sparse: true})
	im, err := NewImage([]*Layer{lower}, up)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt(bytes.Repeat([]byte{0xBB}, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := im.WriteZeroes(16*512, 8*512); err != nil { // mkfs zeroing inode tables
		t.Fatal(err)
	}
	if err := im.Discard(41*512, 3*512); err != nil { // a discard inside a block
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xAA}, 64*512)
	copy(want, bytes.Repeat([]byte{0xBB}, 512))
	clear(want[16*512 : 24*512])
	clear(want[41*512 : 44*512])
	check := func(what string, im *Image) {
		t.Helper()
		buf := make([]byte, len(want))
		if _, err := im.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		for s := 0; s < len(want)/512; s++ {
			if !bytes.Equal(buf[s*512:(s+1)*512], want[s*512:(s+1)*512]) {
				t.Errorf("%s: sector %d reads %#x..., want %#x...", what, s, buf[s*512], want[s*512])
			}
		}
	}
	check("before reopen", im)
	up2 := reopenWritable(t, dir, "upper", up)
	t.Cleanup(func() { up2.Close() })
	im2, err := NewImage([]*Layer{lower}, up2)
	if err != nil {
		t.Fatal(err)
	}
	check("after reopen", im2)
}

// sparseStackModel builds bottom-first lowers with random writes and discards (data,
// holes and zeroed entries) and returns them with the model of the disk they read as.
func sparseStackModel(t *testing.T, dir string, layers, size int, seed uint64) ([]*Layer, []byte, *rand.Rand) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	model := make([]byte, size)
	var lowers []*Layer
	for i := 0; i < layers; i++ {
		name := "lower" + string(rune('a'+i))
		w := newWritableFiles(t, dir, name, CreateOptions{VirtualSize: uint64(size)})
		applyRandomOps(t, r, model, 60, w)
		lowers = append(lowers, commitToLayer(t, filepath.Join(dir, name+".commit"), w.CommitSource(), CommitOptions{}))
		w.Close()
	}
	return lowers, model, r
}

// Random writes (any 512-aligned size), discards and write-zeroes through an image with
// a sparse or append-only upper read the same after every reopen, and so do the
// upper's commit and close_seal stacked on the lowers and the flattened stack.
func TestUpperReopenCommitSealMatchDevice(t *testing.T) {
	for _, sparse := range []bool{true, false} {
		for seed := uint64(1); seed <= 3; seed++ {
			name := "append"
			if sparse {
				name = "sparse"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				const size = 4 << 20
				lowers, model, r := sparseStackModel(t, dir, 2, size, seed)
				up := newWritableFiles(t, dir, "upper", CreateOptions{VirtualSize: size, Sparse: sparse})
				stack := func(u *Writable) *Image {
					im, err := NewImage(lowers, u)
					if err != nil {
						t.Fatal(err)
					}
					return im
				}
				im := stack(up)
				checkReads(t, "lowers", stack(nil), model)
				for round := 0; round < 3; round++ {
					applyRandomOps(t, r, model, 150, im)
					checkReads(t, "before reopen", im, model)
					if round%2 == 0 {
						if err := up.Sync(); err != nil {
							t.Fatal(err)
						}
					}
					up = reopenWritable(t, dir, "upper", up)
					im = stack(up)
					checkReads(t, "after reopen", im, model)
				}

				c := commitToLayer(t, filepath.Join(dir, "upper.commit"), up.CommitSource(), CommitOptions{})
				checkReads(t, "upper commit on the lowers", stack(nil).withTop(t, c), model)

				src, err := im.CommitSource()
				if err != nil {
					t.Fatal(err)
				}
				flat := commitToLayer(t, filepath.Join(dir, "flat.commit"), src, CommitOptions{})
				flatIm, err := NewImage([]*Layer{flat}, nil)
				if err != nil {
					t.Fatal(err)
				}
				checkReads(t, "flattened stack", flatIm, model)

				if err := up.CloseSeal(nil); err != nil {
					t.Fatal(err)
				}
				sealed := openLayerPath(t, filepath.Join(dir, "upper.data"))
				checkReads(t, "close_seal on the lowers", stack(nil).withTop(t, sealed), model)
			})
		}
	}
}

// withTop stacks top over the lowers of im.
func (im *Image) withTop(t *testing.T, top *Layer) *Image {
	t.Helper()
	out, err := NewImage(append(append([]*Layer(nil), im.lowers...), top), nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A partial-block write planned while the upper mapped the whole block (so the lowers
// were not read) that meets a discard punched into the block meanwhile re-plans with
// the lowers' bytes instead of failing or writing stale bytes.
func TestSparseFillRacingDiscardReplans(t *testing.T) {
	dir := t.TempDir()
	const vsize = 1 << 20
	lw := newWritableFiles(t, dir, "lower", CreateOptions{VirtualSize: vsize})
	if _, err := lw.WriteAt(bytes.Repeat([]byte{0xAA}, 8<<10), 8<<10); err != nil { // lower data only from 8 KiB
		t.Fatal(err)
	}
	lower := commitToLayer(t, filepath.Join(dir, "lower.lsmt"), lw.CommitSource(), CommitOptions{})
	lw.Close()
	up := newWritableFiles(t, dir, "upper", CreateOptions{VirtualSize: vsize, Sparse: true})
	im, err := NewImage([]*Layer{lower}, up)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt(bytes.Repeat([]byte{0xBB}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	op := sparseOp{off: 0, n: 512, data: bytes.Repeat([]byte{0xCC}, 512)}
	op.fills = up.blockFills(0, 512, vsize)
	if len(op.fills) != 1 || !up.mapsAll(op.fills[0].off, op.fills[0].n) {
		t.Fatalf("fills %+v", op.fills)
	}
	if err := im.Discard(1024, 1024); err != nil { // the lower reads zeros there: a hole
		t.Fatal(err)
	}
	if err := up.applySparse([]sparseOp{op}); err != errNeedLower {
		t.Fatalf("stale plan applied: %v", err)
	}
	if err := im.applySparse([]sparseOp{op}, false); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xBB}, 4096)
	copy(want, op.data)
	clear(want[1024:2048])
	check := func(what string, w *Writable) {
		t.Helper()
		im, err := NewImage([]*Layer{lower}, w)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		if _, err := im.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: block 0 differs at byte %d (err %v)", what, firstDiff(got, want), err)
		}
	}
	check("before reopen", up)
	up = reopenWritable(t, dir, "upper", up)
	defer up.Close()
	check("after reopen", up)
}
