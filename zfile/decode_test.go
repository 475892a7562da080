package zfile

import (
	"bytes"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// withHelperHook installs hook as helperStarted with two Ps, so that a large read
// has one decode helper, and undoes both when the test ends (after the test has
// seen every helper start, so that none reads helperStarted afterwards).
func withHelperHook(t *testing.T, hook func()) {
	t.Helper()
	prev := runtime.GOMAXPROCS(2)
	helperStarted = hook
	t.Cleanup(func() {
		helperStarted = nil
		runtime.GOMAXPROCS(prev)
	})
}

// A 1 MiB read decodes in parallel, but a helper goroutine that has not started
// yet (a busy machine; a slow wake-up under emulation) does not hold it up: the
// caller claims the work the helper has not taken and returns.
func TestParallelDecodeLateHelper(t *testing.T) {
	src := testData(21, 1<<20, true)
	z := openBytes(t, compressBytes(t, src, Options{}), WithBlockCache(0))
	release := make(chan struct{})
	var started atomic.Int32
	withHelperHook(t, func() {
		started.Add(1)
		<-release
	})
	defer close(release)
	p := make([]byte, len(src))
	done := make(chan error, 1)
	go func() {
		n, err := z.ReadAt(p, 0)
		if err == nil && n != len(p) {
			err = errors.New("short read")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil || !bytes.Equal(p, src) {
			t.Fatalf("read with a stalled helper: %v (data equal: %v)", err, bytes.Equal(p, src))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a 1 MiB read waited for a decode helper that had not started")
	}
	if started.Load() == 0 {
		// The read returned before the helper ran: wait for it to show it was
		// started (it then finds no work).
		for started.Load() == 0 {
			runtime.Gosched()
		}
	}
}

// Waking a helper costs more CPU than it saves for a small batch: reads below
// parallelMinBytes decode on the calling goroutine, larger ones get a helper.
func TestParallelDecodeOnlyLargeReads(t *testing.T) {
	src := testData(22, 1<<20, true)
	z := openBytes(t, compressBytes(t, src, Options{}), WithBlockCache(0))
	var helpers atomic.Int32
	withHelperHook(t, func() { helpers.Add(1) })
	for _, c := range []struct {
		size        int
		wantHelpers bool
	}{{64 << 10, false}, {parallelMinBytes - 4096, false}, {1 << 20, true}} {
		helpers.Store(0)
		p := make([]byte, c.size)
		if n, err := z.ReadAt(p, 0); err != nil || n != c.size || !bytes.Equal(p, src[:c.size]) {
			t.Fatalf("read of %d bytes: n %d, %v", c.size, n, err)
		}
		// A helper may still be starting after the read returned; none should be
		// started for a small read at all.
		if c.wantHelpers {
			for helpers.Load() == 0 {
				runtime.Gosched()
			}
		} else if got := helpers.Load(); got != 0 {
			t.Fatalf("read of %d bytes (%d blocks) woke %d decode helper(s), want none", c.size, c.size/4096, got)
		}
	}
}

// With two bad blocks far apart in one parallel batch (so different decoders
// claim them), the read fails at the first one and counts the bytes before it,
// whichever decoder failed first.
func TestParallelDecodeFirstBadBlock(t *testing.T) {
	src := testData(23, 1<<20, true)
	zb := compressBytes(t, src, Options{})
	z0 := openBytes(t, zb)
	for _, bad := range [][2]int64{{20, 230}, {3, 4}, {255, 200}} {
		b := bytes.Clone(zb)
		for _, blk := range bad {
			b[z0.blockOffset(blk)+1] ^= 0x55
		}
		z := openBytes(t, b, WithBlockCache(0))
		for range 20 {
			p := make([]byte, len(src))
			n, err := z.ReadAt(p, 0)
			first := min(bad[0], bad[1])
			var berr *BlockError
			if !errors.As(err, &berr) || berr.Block != first {
				t.Fatalf("bad blocks %v: %v, want a BlockError for block %d", bad, err, first)
			}
			if n != int(first)*4096 || !bytes.Equal(p[:n], src[:n]) {
				t.Fatalf("bad blocks %v: n = %d, want the %d bytes before block %d", bad, n, first*4096, first)
			}
		}
	}
}
