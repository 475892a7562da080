package e2e

import (
	"bytes"
	"crypto/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stopper is a process that serves devices: a daemon or a foreground attach.
type stopper struct {
	cmd  *exec.Cmd
	log  func() string
	done chan error
}

func (s *stopper) wait() chan error {
	if s.done == nil {
		s.done = make(chan error, 1)
		go func() { s.done <- s.cmd.Wait() }()
	}
	return s.done
}

// waitLog waits for s to log want, failing if it exits first.
func (s *stopper) waitLog(t *testing.T, want string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); {
		if strings.Contains(s.log(), want) {
			return
		}
		select {
		case err := <-s.wait():
			t.Fatalf("exited (%v) before logging %q:\n%s", err, want, s.log())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("no %q in the log within 60 s:\n%s", want, s.log())
}

// exits waits (bounded) for s to exit on its own, with status 0.
func (s *stopper) exits(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case err := <-s.wait():
		if err != nil {
			t.Fatalf("exited with %v:\n%s", err, s.log())
		}
	case <-time.After(within):
		s.cmd.Process.Kill()
		t.Fatalf("did not exit within %v:\n%s", within, s.log())
	}
}

// fuseMountsUnder lists the obd FUSE mounts below dir.
func fuseMountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") && strings.Contains(l, "fuse.obdblk") {
			out = append(out, f[4])
		}
	}
	return out
}

// writableConfig creates a 256 MiB writable layer in dir and its config.
func writableConfig(t *testing.T, dir string) string {
	t.Helper()
	mustRun(t, bin("obd"), "create", filepath.Join(dir, "data"), filepath.Join(dir, "index"), "256M")
	cfg := filepath.Join(dir, "rw.json")
	if err := os.WriteFile(cfg, []byte(`{"lowers":[],"upper":{"data":"data","index":"index"},"resultFile":"result"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func writeSynced(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// serveWritable starts a daemon (and attaches cfg) or a foreground attach of cfg
// and returns the process and the device file.
func serveWritable(t *testing.T, mode, dir, cfg string, extra ...string) (*stopper, string) {
	t.Helper()
	run := filepath.Join(dir, "run")
	if mode == "daemon" {
		d := startDaemon(t, filepath.Join(dir), extra...)
		out, err := d.obd(t, "attach", "--frontend", "fuse", "--config", cfg)
		if err != nil {
			d.kill()
			t.Fatalf("attach: %v\n%s\n%s", err, out, d.logText())
		}
		return &stopper{cmd: d.cmd, log: d.logText}, firstLine(out)
	}
	a := startFG(t, append([]string{"--frontend", "fuse", "--run-dir", run, "--config", cfg}, extra...)...)
	return &stopper{cmd: a.cmd, log: a.log}, a.path
}

// checkReattach attaches cfg again in the foreground and checks the files.
func checkReattach(t *testing.T, dir, cfg, mnt string, files map[string][]byte) {
	t.Helper()
	a := startFG(t, "--frontend", "fuse", "--run-dir", filepath.Join(dir, "run2"), "--config", cfg)
	mustRun(t, "mount", "-o", "loop", a.path, mnt)
	for name, want := range files {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("after re-attach: %s: %v, %d bytes (want %d)", name, err, len(got), len(want))
		}
	}
	mustRun(t, "umount", mnt)
	time.Sleep(300 * time.Millisecond) // the loop device's autoclear is asynchronous
	a.stop(t)
}

// TestStopWhileMounted: SIGTERM to a daemon or a foreground attach whose device
// carries a mounted ext4 (through a plain losetup) does not exit: the device keeps
// serving (the log says why, naming the loop device) until the ext4 is unmounted
// and the loop device detached; then the process exits by itself, leaves no FUSE
// mount behind, and a re-attach finds the fsync'd file and one written during
// the wait.
func TestStopWhileMounted(t *testing.T) {
	needRoot(t)
	for _, mode := range []string{"daemon", "foreground"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			cfg := writableConfig(t, dir)
			mnt := filepath.Join(dir, "mnt")
			os.Mkdir(mnt, 0o755)
			p, img := serveWritable(t, mode, dir, cfg)
			mustRun(t, "mkfs.ext4", "-q", "-F", img)
			dev := strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", img))
			mustRun(t, "mount", dev, mnt)
			files := map[string][]byte{"synced": random(1 << 20), "during-stop": random(300 << 10)}
			writeSynced(t, filepath.Join(mnt, "synced"), files["synced"])

			p.cmd.Process.Signal(syscall.SIGTERM)
			p.waitLog(t, "device still in use")
			if !strings.Contains(p.log(), dev) {
				t.Errorf("the log does not name %s:\n%s", dev, p.log())
			}
			// Still serving: the file system works.
			if err := os.WriteFile(filepath.Join(mnt, "during-stop"), files["during-stop"], 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(filepath.Join(mnt, "synced")); err != nil || !bytes.Equal(got, files["synced"]) {
				t.Fatalf("read during the stop: %v", err)
			}
			select {
			case err := <-p.wait():
				t.Fatalf("exited (%v) while its device was mounted:\n%s", err, p.log())
			default:
			}
			mustRun(t, "umount", mnt)
			mustRun(t, "losetup", "-d", dev)
			p.exits(t, 30*time.Second)
			if m := fuseMountsUnder(t, dir); len(m) > 0 {
				t.Errorf("FUSE mounts left: %v", m)
			}
			checkReattach(t, dir, cfg, mnt, files)
		})
	}
}

// TestForcedStop: with a second signal (daemon) or --force (foreground), the stop
// flushes and detaches a device that is still mounted: the process exits, no
// FUSE mount is left answering ENOTCONN, and a re-attach finds both the fsync'd
// file and one written without fsync (the ext4 above is synced first).
func TestForcedStop(t *testing.T) {
	needRoot(t)
	for _, mode := range []string{"daemon", "foreground"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			cfg := writableConfig(t, dir)
			mnt := filepath.Join(dir, "mnt")
			os.Mkdir(mnt, 0o755)
			var extra []string
			if mode == "foreground" {
				extra = []string{"--force"}
			}
			p, img := serveWritable(t, mode, dir, cfg, extra...)
			mustRun(t, "mkfs.ext4", "-q", "-F", img)
			mustRun(t, "mount", "-o", "loop", img, mnt)
			files := map[string][]byte{"synced": random(1 << 20), "unsynced": random(200 << 10)}
			writeSynced(t, filepath.Join(mnt, "synced"), files["synced"])
			if err := os.WriteFile(filepath.Join(mnt, "unsynced"), files["unsynced"], 0o644); err != nil {
				t.Fatal(err)
			}
			p.cmd.Process.Signal(syscall.SIGTERM)
			if mode == "daemon" {
				p.waitLog(t, "device still in use")
				p.cmd.Process.Signal(syscall.SIGTERM)
			}
			p.exits(t, 30*time.Second)
			if m := fuseMountsUnder(t, dir); len(m) > 0 {
				t.Errorf("FUSE mounts left: %v", m)
			}
			if _, err := os.Stat(filepath.Dir(img)); err != nil && !os.IsNotExist(err) {
				t.Errorf("mount point after the forced stop: %v", err)
			}
			// The ext4 above lost its device; unmounting it releases the loop device.
			run(t, time.Minute, "umount", mnt)
			time.Sleep(300 * time.Millisecond)
			checkReattach(t, dir, cfg, mnt, files)
		})
	}
}

// TestRunDirOwnership: a second daemon on a taken run dir fails naming it; a
// foreground attach in the daemon's run dir gets its own mount point, and its
// SIGTERM unmounts within 5 s while the daemon's device (in the same tree) stays
// mounted and readable. Neither device can be read by another user, even though
// the run dir is open to everyone.
func TestRunDirOwnership(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	for _, d := range []string{"run", "run/fuse"} {
		os.Mkdir(filepath.Join(dir, d), 0o755) // wide open, unlike the default
	}
	cfg := helloConfig(t, dir, "")
	d := startDaemon(t, dir)
	defer d.stop(t)

	other := filepath.Join(dir, "other")
	os.Mkdir(other, 0o700)
	out, err := run(t, time.Minute, bin("obd"), "daemon", "--config", "/nonexistent", "--socket", filepath.Join(other, "obd.sock"),
		"--state-dir", filepath.Join(other, "state"), "--run-dir", d.runDir)
	if err == nil || !strings.Contains(out, "run dir "+d.runDir+" is taken") {
		t.Fatalf("second daemon on %s: %v\n%s", d.runDir, err, out)
	}

	out, err = d.obd(t, "attach", "--frontend", "fuse", "--config", cfg)
	if err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	daemonImg := firstLine(out)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mustRun(t, "mount", "-t", "ext4", "-o", "loop,ro", daemonImg, mnt)
	defer func() {
		run(t, time.Minute, "umount", mnt)
		time.Sleep(300 * time.Millisecond)
	}()

	a := startFG(t, "--frontend", "fuse", "--run-dir", d.runDir, "--config", cfg)
	if a.path == daemonImg || !strings.HasPrefix(a.path, d.runDir+"/fuse/fg-") {
		t.Fatalf("foreground attach got %s, the daemon has %s", a.path, daemonImg)
	}
	for _, img := range []string{daemonImg, a.path} {
		cmd := exec.Command("dd", "if="+img, "of=/dev/null", "count=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("uid 65534 read %s: %s", img, out)
		}
	}
	start := time.Now()
	a.cmd.Process.Signal(syscall.SIGTERM)
	(&stopper{cmd: a.cmd, log: a.log}).exits(t, 5*time.Second)
	t.Logf("foreground attach stopped in %v", time.Since(start).Round(time.Millisecond))
	if _, err := os.Stat(a.path); err == nil {
		t.Errorf("%s still there after the foreground attach stopped", a.path)
	}
	if got := fileSHA(t, filepath.Join(mnt, "hello")); got != helloSHA {
		t.Errorf("daemon's device after the foreground stop: /hello sha256 %s", got)
	}
}

// TestDaemonBadMetricsAddr: a metrics address that cannot be served fails the
// daemon's start-up with a message naming it.
func TestDaemonBadMetricsAddr(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, addr := range []string{taken.Addr().String(), "no-such-host.invalid:99999"} {
		out, err := run(t, time.Minute, bin("obd"), "daemon", "--config", "/nonexistent", "--socket", filepath.Join(dir, "obd.sock"),
			"--state-dir", filepath.Join(dir, "state"), "--run-dir", filepath.Join(dir, "run"), "--metrics-addr", addr)
		if err == nil || !strings.Contains(out, `--metrics-addr "`+addr+`"`) {
			t.Errorf("daemon with --metrics-addr %s: %v\n%s", addr, err, out)
		}
	}
}

// TestAttachPrefetchMissing: --prefetch naming a missing file is an error before
// anything attaches (no result file, no mount).
func TestAttachPrefetchMissing(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	cfg := helloConfig(t, dir, "")
	out, err := run(t, time.Minute, bin("obd"), "attach", "--foreground", "--frontend", "fuse", "--run-dir", filepath.Join(dir, "run"),
		"--prefetch", filepath.Join(dir, "missing.trace"), "--config", cfg)
	if err == nil || !strings.Contains(out, "--prefetch") || !strings.Contains(out, "missing.trace") {
		t.Fatalf("attach with a missing --prefetch file: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "result")); err == nil {
		t.Error("the attach went as far as writing its result file")
	}
	if m := fuseMountsUnder(t, dir); len(m) > 0 {
		t.Errorf("FUSE mounts left: %v", m)
	}
}
