package lsmt

import (
	"testing"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/blockdev/blockdevtest"
)

// The blockdev conformance suite on the stacked view with each kind of upper (none,
// append-only, sparse), with and without lowers, and on bare writable layers. The
// uppers are reopened after a flush (index-log replay, sparse file scan).
func TestConformance(t *testing.T) {
	const size = 12 << 20 // three 4 MiB sparse-fill blocks
	lowers := func(t *testing.T) []*Layer {
		ls, _, _ := sparseStackModel(t, t.TempDir(), 2, size, 11)
		return ls
	}
	// upperImage returns an image of an upper of the given kind over lowers, and the
	// Reopen that closes it and stacks the reopened upper on the same lowers.
	upperImage := func(sparse, withLowers bool) (func(t *testing.T) blockdev.Target, blockdevtest.Options) {
		type state struct {
			dir    string
			lowers []*Layer
		}
		states := map[blockdev.Target]state{}
		open := func(t *testing.T, st state, w *Writable) *Image {
			t.Cleanup(func() { w.Close() })
			im, err := NewImage(st.lowers, w)
			if err != nil {
				t.Fatal(err)
			}
			states[im] = st
			return im
		}
		newTarget := func(t *testing.T) blockdev.Target {
			st := state{dir: t.TempDir()}
			if withLowers {
				st.lowers = lowers(t)
			}
			return open(t, st, newWritableFiles(t, st.dir, "upper", CreateOptions{VirtualSize: size, Sparse: sparse}))
		}
		reopen := func(t *testing.T, old blockdev.Target) blockdev.Target {
			st := states[old]
			return open(t, st, reopenWritable(t, st.dir, "upper", old.(*Image).Upper()))
		}
		return newTarget, blockdevtest.Options{Reopen: reopen, Grows: true,
			Caps: &blockdev.Caps{Discard: true, WriteZeroes: true}}
	}
	for _, tc := range []struct {
		name           string
		sparse, lowers bool
	}{
		{"append", false, false},
		{"append-over-lowers", false, true},
		{"sparse", true, false},
		{"sparse-over-lowers", true, true},
	} {
		t.Run("Image/"+tc.name, func(t *testing.T) {
			newTarget, opts := upperImage(tc.sparse, tc.lowers)
			blockdevtest.Run(t, newTarget, opts)
		})
	}
	t.Run("Image/readonly", func(t *testing.T) {
		blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
			im, err := NewImage(lowers(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			return im
		}, blockdevtest.Options{Caps: &blockdev.Caps{ReadOnly: true, Discard: true, WriteZeroes: true}})
	})
	for _, sparse := range []bool{false, true} {
		name := map[bool]string{false: "Writable/append", true: "Writable/sparse"}[sparse]
		t.Run(name, func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
				dir := t.TempDir()
				w := newWritableFiles(t, dir, "w", CreateOptions{VirtualSize: size, Sparse: sparse})
				t.Cleanup(func() { w.Close() })
				return w
			}, blockdevtest.Options{Grows: true, Caps: &blockdev.Caps{Discard: true, WriteZeroes: true}})
		})
	}
}
