package ublk

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// goMaxThreads is the Go runtime's default thread limit (debug.SetMaxThreads):
// beyond it the process dies with "fatal error: thread exhaustion", taking
// every device with it.
const goMaxThreads = 10000

// threadReserve is kept free beyond a new device's queue threads: the shared
// worker pool, threads blocked in file I/O, the runtime's own.
const threadReserve = maxPooledWorkers + 64

// checkThreadBudget refuses a device whose queue threads would bring the
// process near Go's thread limit or its cgroup's pids.max (systemd TasksMax):
// the attach fails with an error instead of the whole daemon dying later.
func checkThreadBudget(queues int) error {
	threads, err := procThreads()
	if err != nil {
		return nil // cannot tell; the limits still apply
	}
	if threads+queues+threadReserve > goMaxThreads {
		return fmt.Errorf("ublk: %d threads in this process, %d more queue threads would approach Go's limit of %d", threads, queues, goMaxThreads)
	}
	if cur, max, ok := cgroupPids(); ok && cur+queues+threadReserve > max {
		return fmt.Errorf("ublk: %d tasks in this process's cgroup, %d more queue threads would approach its pids.max %d", cur, queues, max)
	}
	return nil
}

func procThreads() (int, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no Threads: in /proc/self/status")
}

// cgroupPids reads pids.current and pids.max of this process's cgroup (v2);
// ok is false without a limit.
func cgroupPids() (cur, max int, ok bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		path, found := strings.CutPrefix(l, "0::")
		if !found {
			continue
		}
		dir := "/sys/fs/cgroup" + strings.TrimSpace(path)
		m, err1 := os.ReadFile(dir + "/pids.max")
		c, err2 := os.ReadFile(dir + "/pids.current")
		if err1 != nil || err2 != nil {
			return 0, 0, false
		}
		max, err1 = strconv.Atoi(strings.TrimSpace(string(m))) // "max": no limit
		cur, err2 = strconv.Atoi(strings.TrimSpace(string(c)))
		return cur, max, err1 == nil && err2 == nil
	}
	return 0, 0, false
}
