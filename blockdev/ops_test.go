package blockdev_test

import (
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/blockdev/blockdevtest"
)

const memSize = 256 << 10

var allCaps = []blockdev.Caps{
	{},
	{Discard: true},
	{WriteZeroes: true},
	{Discard: true, WriteZeroes: true},
	{ReadOnly: true},
}

func newMem(t *testing.T, caps blockdev.Caps) (blockdev.Target, *blockdevtest.Mem) {
	tgt, m := blockdevtest.NewMem(memSize, caps)
	p := make([]byte, memSize)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(p)
	m.Fill(p)
	return tgt, m
}

// countingWrapper intercepts WriteAt and Discard and unwraps for the rest, like the
// daemon's I/O counter.
type countingWrapper struct {
	blockdev.Target
	writes, discards atomic.Int64
}

func (w *countingWrapper) Unwrap() blockdev.Target { return w.Target }

func (w *countingWrapper) WriteAt(p []byte, off int64) (int, error) {
	w.writes.Add(1)
	return w.Target.WriteAt(p, off)
}

func (w *countingWrapper) Discard(off, n int64) error {
	w.discards.Add(1)
	return blockdev.Discard(w.Target, off, n)
}

// plainWrapper intercepts nothing but the Target methods.
type plainWrapper struct{ blockdev.Target }

func (w plainWrapper) Unwrap() blockdev.Target { return w.Target }

func TestConformanceMem(t *testing.T) {
	for _, caps := range allCaps {
		want := caps
		t.Run(capsName(caps), func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T) blockdev.Target { tgt, _ := newMem(t, want); return tgt },
				blockdevtest.Options{Caps: &want})
		})
	}
}

// Wrappers show their inner target's real capabilities, whatever methods they have.
func TestConformanceWrappers(t *testing.T) {
	for _, caps := range allCaps {
		want := caps
		t.Run("counting/"+capsName(caps), func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
				tgt, _ := newMem(t, want)
				return &countingWrapper{Target: tgt}
			}, blockdevtest.Options{Caps: &want})
		})
		t.Run("plain/"+capsName(caps), func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
				tgt, _ := newMem(t, want)
				return plainWrapper{plainWrapper{tgt}} // two levels deep
			}, blockdevtest.Options{Caps: &want})
		})
	}
}

func capsName(c blockdev.Caps) string {
	switch c {
	case blockdev.Caps{}:
		return "plain"
	case blockdev.Caps{ReadOnly: true}:
		return "readonly"
	}
	s := ""
	if c.Discard {
		s += "discard"
	}
	if c.WriteZeroes {
		s += "zeroes"
	}
	return s
}

// WriteZeroes takes the target's ZeroWriter, else its Discarder, else zero writes
// through the outermost wrapper (so a counting wrapper sees them).
func TestWriteZeroesFallbackOrder(t *testing.T) {
	for _, tc := range []struct {
		caps                          blockdev.Caps
		zeroes, discards, innerWrites int64
		wrapperWrites                 bool
	}{
		{caps: blockdev.Caps{Discard: true, WriteZeroes: true}, zeroes: 1},
		{caps: blockdev.Caps{Discard: true}, discards: 1},
		{caps: blockdev.Caps{}, innerWrites: 1, wrapperWrites: true},
	} {
		tgt, m := blockdevtest.NewMem(memSize, tc.caps)
		w := &countingWrapper{Target: tgt}
		if err := blockdev.WriteZeroes(w, 4096, memSize-4096); err != nil {
			t.Fatal(err)
		}
		if m.Zeroes.Load() != tc.zeroes || m.Discards.Load() != tc.discards || m.Writes.Load() != tc.innerWrites {
			t.Errorf("%+v: zeroes %d, discards %d, writes %d; want %d, %d, %d", tc.caps,
				m.Zeroes.Load(), m.Discards.Load(), m.Writes.Load(), tc.zeroes, tc.discards, tc.innerWrites)
		}
		if got := w.writes.Load() > 0; got != tc.wrapperWrites {
			t.Errorf("%+v: wrapper saw writes: %v, want %v", tc.caps, got, tc.wrapperWrites)
		}
		if tc.discards > 0 && w.discards.Load() != tc.discards {
			t.Errorf("%+v: the wrapper's Discard was bypassed", tc.caps)
		}
	}
}

// A wrapper that has Discard over a target that has not reports no discard, and
// the helper does not call it.
func TestWrapperDoesNotAddCapabilities(t *testing.T) {
	tgt, _ := blockdevtest.NewMem(memSize, blockdev.Caps{})
	w := &countingWrapper{Target: tgt}
	if caps := blockdev.CapsOf(w); caps.Discard || caps.WriteZeroes || caps.ReadOnly {
		t.Fatalf("CapsOf(wrapper of a plain target) = %+v, want none", caps)
	}
	if err := blockdev.Discard(w, 0, 512); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Discard: %v, want ErrUnsupported", err)
	}
	if w.discards.Load() != 0 {
		t.Fatal("the wrapper's Discard was called for a target without the capability")
	}
}
