// Package proc answers whether a process runs, the one way obd asks it (the daemon
// about a device's recorded server, ublk about a device's server and creator).
package proc

import (
	"os"
	"strconv"
	"strings"
)

// Start reads a live process's start time, in clock ticks after boot
// (/proc/PID/stat field 22). A zombie counts as dead: it serves nothing and
// holds no device open. pid <= 0 (never started) is dead.
func Start(pid int) (start uint64, alive bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// Fields after the command, which may hold spaces and parentheses: state is field 3.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0, true
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) > 0 && f[0] == "Z" {
		return 0, false
	}
	if len(f) > 19 {
		start, _ = strconv.ParseUint(f[19], 10, 64)
	}
	return start, true
}

// Alive reports whether pid runs and is not a zombie.
func Alive(pid int) bool {
	_, alive := Start(pid)
	return alive
}
