package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// Helper subprocesses: the test binary re-executed with CACHE_TEST_HELPER set.
func TestMain(m *testing.M) {
	switch os.Getenv("CACHE_TEST_HELPER") {
	case "":
		os.Exit(m.Run())
	case "kill":
		helperKill()
	case "share":
		if err := helperShare(os.Getenv("CACHE_TEST_DIR"), 1000); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(2)
}

func envInt(k string) int {
	v, _ := strconv.Atoi(os.Getenv(k))
	return v
}

// helperKill fills a blob unit by unit and SIGKILLs itself at a fill point of
// the third fill (optionally garbling that unit's data first, as a power loss
// that persisted the record but not all of the data would).
func helperKill() {
	point, garble := os.Getenv("CACHE_TEST_POINT"), os.Getenv("CACHE_TEST_GARBLE") == "1"
	dir := os.Getenv("CACHE_TEST_DIR")
	src := newSource(uint64(envInt("CACHE_TEST_SEED")), envInt("CACHE_TEST_SIZE"))
	o := testOptions()
	o.ReadAhead, o.MaxFetchSize = -1, o.RefillSize
	fills := 0
	fillHook = func(p string) {
		if p != point {
			return
		}
		if fills++; fills < 3 {
			return
		}
		if garble {
			base, _ := fileBase(testKey)
			f, err := os.OpenFile(filepath.Join(dir, base+dataSuffix), os.O_RDWR, 0)
			if err == nil {
				f.WriteAt(bytes.Repeat([]byte{0xAA}, 100), int64(2*o.RefillSize)+5000)
				f.Close()
			}
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute)
	}
	c, err := Open(dir, o)
	if err != nil {
		os.Exit(3)
	}
	b, err := c.Open(testKey, src)
	if err != nil {
		os.Exit(3)
	}
	buf := make([]byte, 1000)
	for off := int64(0); off < b.Size(); off += 1000 {
		b.ReadAt(buf, off)
	}
	os.Exit(4) // not reached: killed during the third fill
}

func helper(t *testing.T, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("helper output:\n%s", out.String())
		}
	})
	return cmd
}

func TestKilledMidFill(t *testing.T) {
	const size = 10*(16<<10) - 100 // 10 units
	cases := []struct {
		point   string
		garble  bool
		fetches int64 // units the restarted cache must fetch again
	}{
		{"data", false, 8},   // units 0, 1 complete; unit 2's data written, no record
		{"record", false, 7}, // units 0..2 complete
		{"record", true, 8},  // unit 2's record persisted but its data torn
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/garble=%v", tc.point, tc.garble), func(t *testing.T) {
			dir := t.TempDir()
			cmd := helper(t, "CACHE_TEST_HELPER=kill", "CACHE_TEST_DIR="+dir, "CACHE_TEST_POINT="+tc.point,
				"CACHE_TEST_SEED=21", fmt.Sprintf("CACHE_TEST_SIZE=%d", size), fmt.Sprintf("CACHE_TEST_GARBLE=%v", map[bool]int{false: 0, true: 1}[tc.garble]))
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper: %v, want killed by SIGKILL", err)
			}
			src := newSource(21, size)
			o := testOptions()
			o.ReadAhead, o.MaxFetchSize = -1, o.RefillSize
			c := openCache(t, dir, o)
			b := openBlob(t, c, testKey, src)
			readAll(t, b, src.data, 3000)
			if n := src.calls.Load(); n != tc.fetches {
				t.Errorf("%d units fetched after restart, want %d", n, tc.fetches)
			}
		})
	}
}

// shareSeed/shareSize define the blob both processes of TestTwoProcesses read.
const (
	shareSeed = 22
	shareSize = 1<<20 + 333
)

// helperShare reads the shared blob at random through a cache too small for it
// (so units are evicted all the time, also by the other process), with explicit
// evictions mixed in, and checks every byte.
func helperShare(dir string, reads int) error {
	src := newSource(shareSeed, shareSize)
	src.delay = 200 * time.Microsecond
	o := Options{RefillSize: 16 << 10, MaxFetchSize: 64 << 10, Capacity: 384 << 10, MaxRefetches: 1 << 20, Logger: zap.NewNop()}
	c, err := Open(dir, o)
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := c.Open(testKey, src)
	if err != nil {
		return err
	}
	defer b.Close()
	r := rand.New(rand.NewPCG(uint64(os.Getpid()), 1))
	var mu sync.Mutex // guards r
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < reads/4; i++ {
				mu.Lock()
				off := r.Int64N(shareSize)
				n := 1 + r.IntN(40<<10)
				evict := r.IntN(20) == 0
				mu.Unlock()
				buf := make([]byte, n)
				k, err := b.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errc <- fmt.Errorf("pid %d: ReadAt(%d, %d): %w", os.Getpid(), n, off, err)
					return
				}
				if !bytes.Equal(buf[:k], src.data[off:off+int64(k)]) {
					errc <- fmt.Errorf("pid %d: ReadAt(%d, %d): wrong bytes", os.Getpid(), n, off)
					return
				}
				if evict {
					if err := b.Evict(off, int64(n)); err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func TestTwoProcesses(t *testing.T) {
	dir := t.TempDir()
	cmd := helper(t, "CACHE_TEST_HELPER=share", "CACHE_TEST_DIR="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err := helperShare(dir, 1000)
	werr := cmd.Wait()
	if err != nil {
		t.Error("this process:", err)
	}
	if werr != nil {
		t.Error("other process:", werr)
	}
	if u := diskUsage(t, dir); u > 384<<10+64<<10+4096 { // + one fetch + the .lock file
		t.Errorf("usage %d over capacity", u)
	}
}
