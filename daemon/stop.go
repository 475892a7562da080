package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/obd-project/obd/fuseblk"
	"github.com/obd-project/obd/internal/proc"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// StopOptions control Manager.Stop.
type StopOptions struct {
	// Force, once closed, detaches the devices still in use after flushing them
	// (their users get I/O errors). A nil channel never forces.
	Force <-chan struct{}
	// KeepUblk leaves ublk devices (flushed) for the next daemon, which takes them
	// back through user recovery.
	KeepUblk bool
	// ReportEvery is how often the devices still in use are logged (default 30 s).
	ReportEvery time.Duration
}

// stopPoll is how often Stop looks whether a device in use was released.
var stopPoll = 250 * time.Millisecond

// Stop ends serving without losing acknowledged data. It refuses new attaches,
// flushes every device, and detaches each one once nothing uses it (no mount,
// loop device, holder or open file). A device in use keeps being served, and
// the log names it and its users every ReportEvery, until it is released or
// Force is closed: then it is flushed again and detached anyway. Its state
// record goes only with it.
func (m *Manager) Stop(opts StopOptions) error {
	if opts.ReportEvery <= 0 {
		opts.ReportEvery = 30 * time.Second
	}
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	defer m.releaseRunDir()
	for _, d := range m.snapshot() {
		if err := d.target.Flush(); err != nil {
			m.lg.Error("flush before stop", zap.Int("id", d.rec.ID), zap.String("path", d.rec.Path), zap.Error(err))
		}
	}
	forced := false
	var errs []error
	failed := map[int]error{} // why a device that nobody seemed to use did not detach
	var lastReport time.Time
	for {
		var busy, free []*device
		for _, d := range m.snapshot() {
			if opts.KeepUblk && d.rec.Frontend == FrontendUblk {
				continue
			}
			if !forced && len(d.users()) > 0 {
				busy = append(busy, d)
			} else {
				free = append(free, d)
			}
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, d := range free {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := m.Detach(strconv.Itoa(d.rec.ID), forced)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					delete(failed, d.rec.ID)
				case forced:
					errs = append(errs, err)
					m.forget(d) // nothing more to try: do not loop on it
				default:
					failed[d.rec.ID] = err
					busy = append(busy, d)
				}
			}()
		}
		wg.Wait()
		if len(busy) == 0 {
			return errors.Join(errs...)
		}
		if time.Since(lastReport) >= opts.ReportEvery {
			lastReport = time.Now()
			for _, d := range busy {
				why := strings.Join(d.users(), "; ")
				if err := failed[d.rec.ID]; err != nil {
					why = err.Error()
				}
				m.lg.Warn("stopping: device still in use, serving it until it is released (stop again or use --force to detach it after a flush)",
					zap.Int("id", d.rec.ID), zap.String("path", d.rec.Path), zap.String("user", why))
			}
		}
		select {
		case <-opts.Force:
			m.lg.Warn("stopping: forced, detaching the devices still in use after a flush", zap.Int("devices", len(busy)))
			forced, opts.Force = true, nil
		case <-time.After(stopPoll):
		}
	}
}

func (m *Manager) snapshot() []*device {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*device, 0, len(m.devices))
	for _, d := range m.devices {
		out = append(out, d)
	}
	return out
}

// forget drops a device whose forced detach failed, keeping its state record.
func (m *Manager) forget(d *device) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.devices[d.rec.ID] == d {
		delete(m.devices, d.rec.ID)
	}
}

// users names what keeps the device in use; empty: nothing visible.
func (d *device) users() []string {
	if u, ok := d.srv.(interface{ Users() []string }); ok {
		return u.Users()
	}
	if d.rec.Frontend == FrontendUblk {
		return blockDeviceUsers(d.rec.Path)
	}
	return nil
}

// blockDeviceUsers names what holds a block device: its mounts, its holders
// (device mapper, md), or an exclusive open. Plain opens (dd) are not visible.
func blockDeviceUsers(path string) []string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil
	}
	majMin := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	var out []string
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[2] == majMin {
				out = append(out, "mounted at "+f[4])
			}
		}
	}
	if hs, err := os.ReadDir(filepath.Join("/sys/dev/block", majMin, "holders")); err == nil {
		for _, h := range hs {
			out = append(out, "held by "+h.Name())
		}
	}
	if len(out) == 0 && blockDeviceBusy(path) != nil {
		out = append(out, "open exclusively")
	}
	return out
}

// claimRunDir gives the manager FUSE mount points nobody else hands out. The
// daemon locks the run dir (a second daemon on it fails, naming the holder) and
// numbers its mounts in <run dir>/fuse; a foreground attach uses its own
// <run dir>/fuse/fg-<pid>, so neither ever mounts over the other.
func (m *Manager) claimRunDir() error {
	root := filepath.Join(m.opts.RunDir, "fuse")
	if m.opts.StateDir == "" {
		m.cleanupForegroundDirs(root)
		m.fuseRoot = filepath.Join(root, "fg-"+strconv.Itoa(os.Getpid()))
		return nil
	}
	m.fuseRoot = root
	lockPath := filepath.Join(m.opts.RunDir, "daemon.lock")
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(lockPath)
		f.Close()
		return fmt.Errorf("run dir %s is taken by another obd daemon (pid %s, lock %s): give each daemon its own --run-dir",
			m.opts.RunDir, strings.TrimSpace(string(holder)), lockPath)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	m.runLock = f
	return nil
}

// releaseRunDir unlocks the run dir (daemon) or removes the attach's own
// directory once its mounts are gone.
func (m *Manager) releaseRunDir() {
	if m.runLock != nil {
		m.runLock.Close()
		m.runLock = nil
	}
	if m.opts.StateDir == "" && m.fuseRoot != "" {
		os.Remove(m.fuseRoot) // only if empty: a device that could not detach keeps it
	}
}

// cleanupForegroundDirs removes the directories of foreground attaches that died:
// their dead mounts are cleaned up first; anything still in use is left alone.
func (m *Manager) cleanupForegroundDirs(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, "fg-*"))
	for _, dir := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "fg-"))
		if err != nil || proc.Alive(pid) {
			continue
		}
		subs, _ := os.ReadDir(dir)
		for _, s := range subs {
			p := filepath.Join(dir, s.Name())
			if _, err := fuseblk.CleanupStale(p); err != nil {
				m.lg.Warn("stale mount of a dead foreground attach", zap.String("dir", p), zap.Error(err))
			}
			os.Remove(p)
		}
		os.Remove(dir)
	}
}
