// Package blockdevtest is the conformance suite of blockdev.Target, in the style of
// go-containerregistry's pkg/v1/validate: every Target and every wrapper in the tree
// runs Run, so a new one (or a new wrapper) is held to the same contract.
//
// Run checks, against a byte-array model of the device: ReadAt, WriteAt, Flush and
// the capability helpers (blockdev.Discard, blockdev.WriteZeroes) at random
// 512-aligned offsets and lengths; zero-length operations; out-of-range requests
// (an error, never a silent short transfer; or, for a target that grows, a write
// that lands); that read-only targets refuse writes
// with blockdev.ErrReadOnly and keep their bytes; that CapsOf is consistent with
// what the helpers do; and concurrent use from several goroutines (run it under
// -race). With Options.Reopen it also checks that flushed data survives a reopen.
// A blockdev.FileMapper's extents must read the same bytes as ReadAt wherever it
// maps a range.
package blockdevtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/obd-project/obd/blockdev"
	"golang.org/x/sys/unix"
)

// Sector is the granularity of every request the suite sends (the frontends' logical
// block size).
const Sector = 512

// Options tune Run. The zero value is a sensible default.
type Options struct {
	// Caps, if set, are the capabilities blockdev.CapsOf must report.
	Caps *blockdev.Caps
	// Ops is the number of random operations of the model test (default 300); the
	// concurrency test runs as many, spread over its goroutines.
	Ops int
	// MaxIO is the largest request in bytes (default 128 KiB).
	MaxIO int
	// Span limits the model to the first Span bytes of the device (default: the
	// whole device, at most 64 MiB), so large devices stay cheap to check.
	Span int64
	// Grows declares a target whose writes past Size extend it (an LSMT writable
	// layer, as the reference's); the suite then checks that such a write lands and
	// grows Size instead of expecting an error.
	Grows bool
	// Seed makes the random operations reproducible (default 1).
	Seed uint64
	// Reopen, if set, is called after a Flush with the target; it closes it and
	// returns the same device opened again, whose bytes must equal the model.
	Reopen func(t *testing.T, old blockdev.Target) blockdev.Target
}

// Run runs the conformance suite as subtests of t. newTarget returns a fresh target
// for each subtest (and registers its clean-up with t.Cleanup); its initial bytes
// may be anything (lower layers, a file): the suite reads them as the model's start.
func Run(t *testing.T, newTarget func(t *testing.T) blockdev.Target, opts Options) {
	if opts.Ops <= 0 {
		opts.Ops = 300
	}
	if opts.MaxIO <= 0 {
		opts.MaxIO = 128 << 10
	}
	opts.MaxIO = max(opts.MaxIO/Sector*Sector, Sector)
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	t.Run("Caps", func(t *testing.T) { testCaps(t, newTarget(t), opts) })
	t.Run("Model", func(t *testing.T) { testModel(t, newTarget(t), opts) })
	t.Run("ZeroLength", func(t *testing.T) { testZeroLength(t, newTarget(t), opts) })
	t.Run("OutOfRange", func(t *testing.T) { testOutOfRange(t, newTarget(t), opts) })
	t.Run("ReadOnly", func(t *testing.T) { testReadOnly(t, newTarget(t), opts) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newTarget(t), opts) })
}

// span is the modelled prefix of the device.
func span(t *testing.T, tgt blockdev.Target, opts Options) int64 {
	t.Helper()
	size := tgt.Size()
	if size < Sector || size%Sector != 0 {
		t.Fatalf("Size() = %d, want a positive multiple of %d", size, Sector)
	}
	s := opts.Span
	if s <= 0 {
		s = 64 << 20
	}
	return min(size, s/Sector*Sector)
}

// snapshot reads [0, n) of tgt: the model's initial state.
func snapshot(t *testing.T, tgt blockdev.Target, n int64) []byte {
	t.Helper()
	model := make([]byte, n)
	for off := int64(0); off < n; off += 1 << 20 {
		p := model[off:min(n, off+1<<20)]
		if got, err := tgt.ReadAt(p, off); err != nil || got != len(p) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d, nil", len(p), off, got, err, len(p))
		}
	}
	return model
}

// checkRange reads [off, off+len(want)) and reports where it differs from want.
func checkRange(tgt blockdev.Target, want []byte, off int64) error {
	got := make([]byte, len(want))
	n, err := tgt.ReadAt(got, off)
	if err != nil || n != len(got) {
		return fmt.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d, nil", len(got), off, n, err, len(got))
	}
	if i := firstDiff(got, want); i >= 0 {
		return fmt.Errorf("ReadAt(%d bytes at %d): byte at %d is %#x, model has %#x",
			len(got), off, off+int64(i), got[i], want[i])
	}
	return checkMapped(tgt, want, off)
}

// checkMapped reads [off, off+len(want)) through a FileMapper's extents, as a
// frontend does (pread, zeros past a file's end; zeros where Fd < 0), if tgt
// maps the range.
func checkMapped(tgt blockdev.Target, want []byte, off int64) error {
	m, ok := tgt.(blockdev.FileMapper)
	if !ok {
		return nil
	}
	ext, ok := m.MapFile(nil, off, int64(len(want)))
	if !ok {
		return nil
	}
	got := make([]byte, len(want))
	pos := int64(0)
	for _, e := range ext {
		if e.Length <= 0 || pos+e.Length > int64(len(got)) {
			return fmt.Errorf("MapFile(%d, %d): extent %+v at %d outside the range", off, len(want), e, pos)
		}
		if e.Fd >= 0 {
			p := got[pos : pos+e.Length]
			for done := 0; done < len(p); {
				n, err := unix.Pread(e.Fd, p[done:], e.Offset+int64(done))
				if err != nil {
					return fmt.Errorf("MapFile(%d, %d): pread of extent %+v: %w", off, len(want), e, err)
				}
				if n == 0 {
					break // the rest reads as zeros
				}
				done += n
			}
		}
		pos += e.Length
	}
	if pos != int64(len(got)) {
		return fmt.Errorf("MapFile(%d, %d): extents cover %d bytes", off, len(want), pos)
	}
	if i := firstDiff(got, want); i >= 0 {
		return fmt.Errorf("MapFile(%d bytes at %d): byte at %d is %#x, model has %#x",
			len(got), off, off+int64(i), got[i], want[i])
	}
	return nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

func testCaps(t *testing.T, tgt blockdev.Target, opts Options) {
	caps := blockdev.CapsOf(tgt)
	if opts.Caps != nil && caps != *opts.Caps {
		t.Fatalf("CapsOf = %+v, want %+v", caps, *opts.Caps)
	}
	n := span(t, tgt, opts)
	model := snapshot(t, tgt, n)
	err := blockdev.Discard(tgt, 0, Sector)
	switch {
	case caps.ReadOnly:
		if !errors.Is(err, blockdev.ErrReadOnly) {
			t.Errorf("Discard of a read-only target: %v, want ErrReadOnly", err)
		}
	case !caps.Discard:
		if !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("Discard without the capability: %v, want errors.ErrUnsupported", err)
		}
	case err != nil:
		t.Errorf("Discard: %v", err)
	default:
		clear(model[:Sector])
	}
	if err := checkRange(tgt, model, 0); err != nil {
		t.Error(err)
	}
}

// op applies one random operation to tgt and model (the model covers
// [base, base+len(model)) of the device) and checks reads against it.
func op(tgt blockdev.Target, caps blockdev.Caps, rng *rand.Rand, model []byte, base int64, maxIO int) error {
	sectors := len(model) / Sector
	n := 1 + rng.IntN(min(maxIO/Sector, sectors))
	if rng.IntN(4) == 0 { // now and then a 4 KiB-aligned request, as file systems send
		n = min(sectors, (n+7)&^7)
	}
	at := rng.IntN(sectors-n+1) * Sector
	off, end := base+int64(at), at+n*Sector
	switch k := rng.IntN(10); {
	case k < 4 || caps.ReadOnly:
		return checkRange(tgt, model[at:end], off)
	case k < 7:
		p := make([]byte, n*Sector)
		for i := 0; i < len(p); i += 8 {
			binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
		}
		if got, err := tgt.WriteAt(p, off); err != nil || got != len(p) {
			return fmt.Errorf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, got, err)
		}
		copy(model[at:], p)
	case k < 8:
		if err := blockdev.WriteZeroes(tgt, off, int64(n*Sector)); err != nil {
			return fmt.Errorf("WriteZeroes(%d, %d): %v", off, n*Sector, err)
		}
		clear(model[at:end])
	case k < 9 && caps.Discard:
		if err := blockdev.Discard(tgt, off, int64(n*Sector)); err != nil {
			return fmt.Errorf("Discard(%d, %d): %v", off, n*Sector, err)
		}
		clear(model[at:end])
	default:
		if err := tgt.Flush(); err != nil {
			return fmt.Errorf("Flush: %v", err)
		}
	}
	return nil
}

func testModel(t *testing.T, tgt blockdev.Target, opts Options) {
	caps := blockdev.CapsOf(tgt)
	n := span(t, tgt, opts)
	model := snapshot(t, tgt, n)
	rng := rand.New(rand.NewPCG(opts.Seed, 0x6d6f64656c))
	for i := range opts.Ops {
		if err := op(tgt, caps, rng, model, 0, opts.MaxIO); err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	if err := checkRange(tgt, model, 0); err != nil {
		t.Fatalf("after %d ops: %v", opts.Ops, err)
	}
	if opts.Reopen == nil {
		return
	}
	if err := tgt.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	tgt = opts.Reopen(t, tgt)
	if err := checkRange(tgt, model, 0); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
}

func testZeroLength(t *testing.T, tgt blockdev.Target, opts Options) {
	caps := blockdev.CapsOf(tgt)
	n := span(t, tgt, opts)
	model := snapshot(t, tgt, n)
	mid := n / 2 / Sector * Sector
	for _, off := range []int64{0, mid} {
		if got, err := tgt.ReadAt([]byte{}, off); got != 0 || err != nil {
			t.Errorf("ReadAt(0 bytes at %d) = %d, %v; want 0, nil", off, got, err)
		}
		got, err := tgt.WriteAt([]byte{}, off)
		if got != 0 || (err != nil && !(caps.ReadOnly && errors.Is(err, blockdev.ErrReadOnly))) {
			t.Errorf("WriteAt(0 bytes at %d) = %d, %v; want 0, nil", off, got, err)
		}
		if caps.ReadOnly {
			continue
		}
		if err := blockdev.WriteZeroes(tgt, off, 0); err != nil {
			t.Errorf("WriteZeroes(%d, 0): %v", off, err)
		}
		if caps.Discard {
			if err := blockdev.Discard(tgt, off, 0); err != nil {
				t.Errorf("Discard(%d, 0): %v", off, err)
			}
		}
	}
	if err := checkRange(tgt, model, 0); err != nil {
		t.Errorf("after zero-length operations: %v", err)
	}
}

func testOutOfRange(t *testing.T, tgt blockdev.Target, opts Options) {
	caps := blockdev.CapsOf(tgt)
	size := tgt.Size()
	n := span(t, tgt, opts)
	model := snapshot(t, tgt, n)
	buf := make([]byte, 2*Sector)
	if got, err := tgt.ReadAt(buf[:Sector], size); err == nil || got != 0 {
		t.Errorf("ReadAt(%d bytes at size %d) = %d, %v; want 0 and an error", Sector, size, got, err)
	}
	if got, err := tgt.ReadAt(buf, size-Sector); err == nil || got > Sector {
		t.Errorf("ReadAt(%d bytes at %d, size %d) = %d, %v; want an error and at most %d bytes",
			len(buf), size-Sector, size, got, err, Sector)
	} else if n == size && !bytes.Equal(buf[:got], model[size-Sector:size-Sector+int64(got)]) {
		t.Errorf("ReadAt across the end: the in-range bytes differ from the model")
	}
	for _, r := range [][2]int64{{size, Sector}, {size - Sector, 2 * Sector}, {-Sector, Sector}} {
		if err := blockdev.WriteZeroes(tgt, r[0], r[1]); err == nil {
			t.Errorf("WriteZeroes(%d, %d) of a %d-byte device succeeded", r[0], r[1], size)
		}
		if err := blockdev.Discard(tgt, r[0], r[1]); err == nil {
			t.Errorf("Discard(%d, %d) of a %d-byte device succeeded", r[0], r[1], size)
		}
	}
	if opts.Grows && !caps.ReadOnly {
		p := bytes.Repeat([]byte{0xa5}, Sector)
		if got, err := tgt.WriteAt(p, size); err != nil || got != Sector {
			t.Errorf("WriteAt(%d bytes at size %d) of a growing target = %d, %v", Sector, size, got, err)
		} else if tgt.Size() != size+Sector {
			t.Errorf("Size after a write past the end = %d, want %d", tgt.Size(), size+Sector)
		} else if err := checkRange(tgt, p, size); err != nil {
			t.Errorf("the write past the end: %v", err)
		}
	} else {
		if got, err := tgt.WriteAt(buf[:Sector], size); err == nil {
			t.Errorf("WriteAt(%d bytes at size %d) = %d, nil; want an error", Sector, size, got)
		}
		if got, err := tgt.WriteAt(bytes.Repeat([]byte{0xa5}, 2*Sector), size-Sector); err == nil {
			t.Errorf("WriteAt(%d bytes at %d, size %d) = %d, nil; want an error", 2*Sector, size-Sector, size, got)
		}
		if n == size { // the last sector may hold either its old or the new bytes
			last := make([]byte, Sector)
			if _, err := tgt.ReadAt(last, size-Sector); err != nil {
				t.Fatalf("ReadAt(last sector): %v", err)
			}
			if !bytes.Equal(last, model[size-Sector:]) && !bytes.Equal(last, bytes.Repeat([]byte{0xa5}, Sector)) {
				t.Errorf("a failed write across the end left the last sector neither old nor new")
			}
			copy(model[size-Sector:], last)
		}
	}
	if err := checkRange(tgt, model, 0); err != nil {
		t.Errorf("after out-of-range requests: %v", err)
	}
}

func testReadOnly(t *testing.T, tgt blockdev.Target, opts Options) {
	caps := blockdev.CapsOf(tgt)
	if !caps.ReadOnly {
		t.Skip("writable target")
	}
	n := span(t, tgt, opts)
	model := snapshot(t, tgt, n)
	p := bytes.Repeat([]byte{0x5a}, 4*Sector)
	if got, err := tgt.WriteAt(p, 0); !errors.Is(err, blockdev.ErrReadOnly) || got != 0 {
		t.Errorf("WriteAt of a read-only target = %d, %v; want 0, ErrReadOnly", got, err)
	}
	if err := blockdev.WriteZeroes(tgt, 0, 4*Sector); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Errorf("WriteZeroes of a read-only target: %v, want ErrReadOnly", err)
	}
	if err := blockdev.Discard(tgt, 0, 4*Sector); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Errorf("Discard of a read-only target: %v, want ErrReadOnly", err)
	}
	if err := tgt.Flush(); err != nil {
		t.Errorf("Flush of a read-only target: %v", err)
	}
	if err := checkRange(tgt, model, 0); err != nil {
		t.Errorf("after refused writes: %v", err)
	}
}

// testConcurrent runs workers on disjoint regions (adjacent, so they share the
// target's blocks and locks) all at once, each checking its region against its part
// of the model.
func testConcurrent(t *testing.T, tgt blockdev.Target, opts Options) {
	const workers = 4
	caps := blockdev.CapsOf(tgt)
	n := span(t, tgt, opts)
	model := snapshot(t, tgt, n)
	region := n / workers / Sector * Sector
	if region < Sector {
		t.Skipf("device of %d bytes too small for %d workers", n, workers)
	}
	var wg sync.WaitGroup // flushes are among the random operations
	for w := range workers {
		base := int64(w) * region
		part := model[base : base+region]
		rng := rand.New(rand.NewPCG(opts.Seed, uint64(w)+1))
		wg.Go(func() {
			for i := range max(opts.Ops/workers, 10) {
				if err := op(tgt, caps, rng, part, base, opts.MaxIO); err != nil {
					t.Errorf("worker %d, op %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := checkRange(tgt, model, 0); err != nil {
		t.Errorf("after concurrent operations: %v", err)
	}
}
