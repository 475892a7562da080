package fuseblk

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// loopDev is a loop device found through sysfs.
type loopDev struct {
	dev     string // /dev/loopN
	name    string // loopN
	majMin  string // "7:N", as in mountinfo
	backing string // backing file path, without a " (deleted)" suffix
}

// loops lists bound loop devices.
func loops() ([]loopDev, error) {
	names, err := filepath.Glob("/sys/block/loop*")
	if err != nil {
		return nil, err
	}
	var out []loopDev
	for _, sys := range names {
		b, err := os.ReadFile(filepath.Join(sys, "loop", "backing_file"))
		if err != nil {
			continue // unbound, or it went away meanwhile
		}
		mm, err := os.ReadFile(filepath.Join(sys, "dev"))
		if err != nil {
			continue
		}
		name := filepath.Base(sys)
		out = append(out, loopDev{
			dev:     "/dev/" + name,
			name:    name,
			majMin:  strings.TrimSpace(string(mm)),
			backing: strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)"),
		})
	}
	return out, nil
}

func loopsBackedBy(path string) ([]loopDev, error) {
	all, err := loops()
	var out []loopDev
	for _, l := range all {
		if l.backing == path {
			out = append(out, l)
		}
	}
	return out, err
}

func loopsUnder(dir string) ([]loopDev, error) {
	all, err := loops()
	var out []loopDev
	for _, l := range all {
		if strings.HasPrefix(l.backing, dir+"/") {
			out = append(out, l)
		}
	}
	return out, err
}

// user describes what keeps the loop device busy ("mounted at X", "held by dm-0"),
// or "" if nothing visible does. An open file descriptor elsewhere is not visible;
// it shows up as a busy unmount instead.
func (l loopDev) user() string {
	if mnts, err := mounts(); err == nil {
		for _, m := range mnts {
			if m.majMin == l.majMin {
				return "mounted at " + m.point
			}
		}
	}
	if hs, err := os.ReadDir(filepath.Join("/sys/block", l.name, "holders")); err == nil && len(hs) > 0 {
		return "held by " + hs[0].Name()
	}
	return ""
}

// detach clears the loop device. The kernel detaches at once when we are its only
// opener and otherwise on its last close (autoclear).
func (l loopDev) detach() error {
	f, err := os.OpenFile(l.dev, os.O_RDONLY, 0)
	if err != nil {
		if isNotExist(err) {
			return nil
		}
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && err != unix.ENXIO {
		return fmt.Errorf("LOOP_CLR_FD: %w", err)
	}
	return nil
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	majMin string
	point  string
	fsType string
}

func mounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root point opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{majMin: fields[2], point: unescapeMount(fields[4]), fsType: fields[sep+1]})
	}
	return out, sc.Err()
}

// mountAt returns the topmost mount at point.
func mountAt(point string) (mountEntry, bool, error) {
	mnts, err := mounts()
	var found mountEntry
	ok := false
	for _, m := range mnts {
		if m.point == point {
			found, ok = m, true
		}
	}
	return found, ok, err
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// autoclear reports whether the kernel detaches the loop device on its last close
// (`mount -o loop` sets it; a plain `losetup` does not).
func (l loopDev) autoclear() bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", l.name, "loop", "autoclear"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// mountPoints lists where the loop device is mounted.
func (l loopDev) mountPoints() []string {
	mnts, _ := mounts()
	var out []string
	for _, m := range mnts {
		if m.majMin == l.majMin {
			out = append(out, m.point)
		}
	}
	return out
}

// openers names the processes that have path open ("pid 12 (dd)"), from /proc.
func openers(path string) []string {
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	seen := map[string]bool{}
	var out []string
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err != nil || target != path {
			continue
		}
		pid := filepath.Base(filepath.Dir(filepath.Dir(fd)))
		if seen[pid] {
			continue
		}
		seen[pid] = true
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		out = append(out, fmt.Sprintf("open by pid %s (%s)", pid, strings.TrimSpace(string(comm))))
	}
	return out
}
