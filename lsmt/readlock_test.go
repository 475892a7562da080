package lsmt

import (
	"bytes"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// blockingReaderAt is a lower layer's remote blob during a registry outage: once armed,
// every read announces itself on entered and waits for release.
type blockingReaderAt struct {
	r       io.ReaderAt
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (b *blockingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if b.armed.Load() {
		b.entered <- struct{}{}
		<-b.release
	}
	return b.r.ReadAt(p, off)
}

// within fails the test if f does not return within a generous bound (it would
// otherwise hang until the blocked lower read is released, which the test never does
// before checking).
func within(t *testing.T, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s is stuck behind a blocked lower read", what)
	}
}

// A read of a lower layer that blocks (a cold remote read) must not hold up writes,
// flushes or reads of the upper's own data on the same device.
func TestSlowLowerReadDoesNotStallUpper(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		dir := t.TempDir()
		lw := newWritableFiles(t, dir, "lower", CreateOptions{VirtualSize: 1 << 20})
		lowerData := bytes.Repeat([]byte{1}, 64<<10)
		if _, err := lw.WriteAt(lowerData, 512<<10); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "lower.lsmt")
		commitToLayer(t, path, lw.CommitSource(), CommitOptions{})
		lw.Close()
		f := openLayerPath(t, path)
		slow := &blockingReaderAt{r: f.ReaderAt(), entered: make(chan struct{}), release: make(chan struct{})}
		var releaseOnce sync.Once
		releaseLower := func() { slow.armed.Store(false); releaseOnce.Do(func() { close(slow.release) }) }
		lower, err := OpenLayer(slow, f.FileSize())
		if err != nil {
			t.Fatal(err)
		}
		up := newWritableFiles(t, dir, "upper", CreateOptions{VirtualSize: 1 << 20, Sparse: sparse})
		t.Cleanup(func() { up.Close() })
		t.Cleanup(releaseLower) // runs first: a failed check must not leave Close waiting
		im, err := NewImage([]*Layer{lower}, up)
		if err != nil {
			t.Fatal(err)
		}
		hot := bytes.Repeat([]byte{2}, 4096)
		if _, err := im.WriteAt(hot, 0); err != nil {
			t.Fatal(err)
		}

		slow.armed.Store(true)
		cold := make([]byte, 4096)
		coldDone := make(chan error, 1)
		go func() {
			_, err := im.ReadAt(cold, 512<<10)
			coldDone <- err
		}()
		<-slow.entered // the cold read is now inside the lower

		within(t, "a write and a flush", func() error {
			if _, err := im.WriteAt(bytes.Repeat([]byte{3}, 4096), 8192); err != nil {
				return err
			}
			return im.Flush()
		})
		within(t, "a read of upper data", func() error {
			got := make([]byte, 4096)
			if _, err := im.ReadAt(got, 0); err != nil {
				return err
			}
			if !bytes.Equal(got, hot) {
				t.Errorf("sparse=%v: upper data reads %#x...", sparse, got[0])
			}
			return nil
		})

		releaseLower()
		if err := <-coldDone; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cold, lowerData[:4096]) {
			t.Errorf("sparse=%v: the cold read returned %#x...", sparse, cold[0])
		}
	}
}
