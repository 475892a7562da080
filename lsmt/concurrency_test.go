package lsmt

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"
)

// Readers run concurrently with a writer through the stacked view. Each writer step
// writes a whole 4 KiB block with one repeated byte, so a reader must always see a
// block made of a single byte value (no torn or misplaced data). Run with -race.
// With a sparse upper the writes and discards also fill blocks from the lowers.
func TestConcurrentReadWrite(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		st := newRandomStack(t, 2, 1<<20, 20, 11)
		im := st.image(t, true)
		if sparse {
			up := newWritableFiles(t, t.TempDir(), "sparse", CreateOptions{VirtualSize: 1 << 20, Sparse: true})
			t.Cleanup(func() { up.Close() })
			var err error
			if im, err = NewImage(st.lowers, up); err != nil {
				t.Fatal(err)
			}
		}
		concurrentReadWrite(t, im)
	}
}

func concurrentReadWrite(t *testing.T, im *Image) {
	const blocks = 64
	for b := 0; b < blocks; b++ {
		if _, err := im.WriteAt(bytes.Repeat([]byte{byte(b)}, 4096), int64(b)*4096); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan string, 4)
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 0))
			p := make([]byte, 4096)
			for {
				select {
				case <-stop:
					return
				default:
				}
				b := r.IntN(blocks)
				if _, err := im.ReadAt(p, int64(b)*4096); err != nil {
					errs <- err.Error()
					return
				}
				for _, c := range p {
					if c != p[0] {
						errs <- "torn block"
						return
					}
				}
			}
		}(uint64(g))
	}
	r := rand.New(rand.NewPCG(1, 0))
	for i := 0; i < 2000; i++ {
		b := r.IntN(blocks)
		var err error
		if i%5 == 0 {
			err = im.Discard(int64(b)*4096, 4096)
		} else {
			_, err = im.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), int64(b)*4096)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case e := <-errs:
		t.Fatal(e)
	default:
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
}
