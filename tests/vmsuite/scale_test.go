//go:build vmsuite

package vmsuite

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// procStatus reads a numeric field (Threads, VmRSS in kB) of /proc/PID/status.
func procStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.Atoi(strings.Fields(v)[0])
			if err != nil {
				t.Fatalf("%s: %q", field, l)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// threadNames counts the threads of pid by name ("obd", "iou-wrk-N" for
// io_uring's async workers), e.g. "obd 600, iou-wrk 400".
func threadNames(pid int) string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/comm", pid))
	count := map[string]int{}
	for _, p := range tasks {
		b, _ := os.ReadFile(p)
		name, _, _ := strings.Cut(strings.TrimSpace(string(b)), "-")
		if name == "iou" {
			name = "iou-wrk"
		}
		count[name]++
	}
	var parts []string
	for name, n := range count {
		parts = append(parts, fmt.Sprintf("%s %d", name, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// queuesOf counts the hardware queues of /dev/ublkbN.
func queuesOf(t *testing.T, dev string) int {
	ents, err := os.ReadDir(filepath.Join("/sys/block", filepath.Base(dev), "mq"))
	if err != nil || len(ents) == 0 {
		t.Fatalf("queues of %s: %v", dev, err)
	}
	return len(ents)
}

// readDirect reads the first n bytes of dev in 1 MiB O_DIRECT reads: every
// request uses a whole tag buffer.
func readDirect(dev string, n int) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for off := 0; off < n; off += len(buf) {
		if k, err := unix.Pread(fd, buf, int64(off)); err != nil || k != len(buf) {
			return fmt.Errorf("%s at %d: %d bytes, %v", dev, off, k, err)
		}
	}
	return nil
}

// parallel runs f(i) for i in [from, to) on up to 16 goroutines.
func parallel(from, to int, f func(i int)) {
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := from; i < to; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			f(i)
		}(i)
	}
	wg.Wait()
}

// f) threads and memory do not grow with idle devices: 256 ublk devices on one
// daemon (it used to lock 1 + 16 threads per queue, ~147 devices reaching Go's
// 10000-thread limit and crash-looping recovery); the daemon's thread count
// stays below 2 x queues x devices + 64 at 1, 64 and 256 devices, and after a
// kill -9 and the recovery of all 256. RSS is printed, also after a 1 MiB
// O_DIRECT sequential read on 64 devices (tag buffers are returned when idle).
func TestThreadsManyDevices(t *testing.T) {
	const n = 256
	// Some kernels count every device against ublks_max (default 64); best effort.
	p := "/sys/module/ublk_drv/parameters/ublks_max"
	if b, err := os.ReadFile(p); err == nil {
		t.Logf("ublks_max %s, raised to 1024", strings.TrimSpace(string(b)))
	}
	if err := os.WriteFile(p, []byte("1024"), 0o644); err != nil {
		t.Logf("raise ublks_max: %v", err)
	}
	d := newDaemon(t)
	defer d.stop(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "hello.json", fmt.Sprintf(`{"lowers":[{"file":%q}]}`, helloL))
	paths := make([]string, n)
	attach := func(from, to int) {
		parallel(from, to, func(i int) {
			out, err := d.obd("attach", "--frontend", "ublk", "--config", cfg)
			if err != nil {
				t.Errorf("attach %d: %v: %s", i, err, out)
				return
			}
			paths[i] = strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
		})
		if t.Failed() {
			t.Fatalf("attach failed:\n%s", d.log())
		}
	}
	pid := d.cmd.Process.Pid
	check := func(what string, devices int) {
		q := queuesOf(t, paths[0])
		threads, rss := procStatus(t, pid, "Threads"), procStatus(t, pid, "VmRSS")
		limit := 2*q*devices + 64
		t.Logf("MEASURE %s: %d devices x %d queues: daemon threads %d (limit %d; %s), RSS %d MiB", what, devices, q, threads, limit, threadNames(pid), rss>>10)
		if threads >= limit {
			t.Errorf("%s: %d threads with %d devices of %d queues, want < %d", what, threads, devices, q, limit)
		}
	}
	start := time.Now()
	attach(0, 1)
	check("attached", 1)
	attach(1, 64)
	check("attached", 64)

	parallel(0, 64, func(i int) {
		if err := readDirect(paths[i], 32<<20); err != nil {
			t.Error(err)
		}
	})
	check("after 32 MiB O_DIRECT reads on each", 64)
	time.Sleep(3 * time.Second) // idle queues return their buffers after a second
	check("3 s later", 64)
	if rss := procStatus(t, pid, "VmRSS") >> 10; rss > 512 {
		t.Errorf("RSS %d MiB with 64 idle devices after large reads, want <= 512", rss)
	}

	attach(64, n)
	check("attached", n)
	t.Logf("%d attaches took %v", n, time.Since(start))

	// kill -9 and a new daemon: all 256 recovered, threads still bounded.
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
	start = time.Now()
	d.start(t)
	pid = d.cmd.Process.Pid
	out, err := d.obd("list")
	if err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if live := strings.Count(out, "live"); live != n {
		t.Errorf("%d of %d devices live after the restart:\n%s", live, n, d.log())
	}
	check(fmt.Sprintf("recovered after kill -9 (%v)", time.Since(start).Round(time.Second)), n)
	if err := readDirect(paths[n-1], 1<<20); err != nil {
		t.Errorf("recovered device: %v", err)
	}
	parallel(0, n, func(i int) {
		if out, err := d.obd("detach", paths[i]); err != nil {
			t.Errorf("detach %s: %v %s", paths[i], err, out)
		}
	})
}
