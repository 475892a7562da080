package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonFUSEHelloWorld attaches the converted hello-world image through a real
// daemon with the FUSE frontend, loop-mounts it read-only and reads /hello.
func TestDaemonFUSEHelloWorld(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	cfg := helloConfig(t, dir, "")
	d := startDaemon(t, dir)
	defer d.stop(t)

	out, err := d.obd(t, "attach", "--frontend", "fuse", "--config", cfg)
	if err != nil {
		t.Fatalf("attach: %v\n%s\n%s", err, out, d.logText())
	}
	img := firstLine(out)
	if !strings.HasSuffix(img, "/image") {
		t.Fatalf("first line of attach output %q is not the image file", img)
	}
	if res, _ := os.ReadFile(filepath.Join(dir, "result")); string(res) != "success" {
		t.Fatalf("result file: %q", res)
	}
	st, err := os.Stat(img)
	if err != nil || st.Size() != 64<<30 {
		t.Fatalf("image file: %v, size %v", err, st)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mustRun(t, "mount", "-t", "ext4", "-o", "loop,ro", img, mnt)
	if got := fileSHA(t, filepath.Join(mnt, "hello")); got != helloSHA {
		t.Errorf("/hello sha256 %s, want %s", got, helloSHA)
	}
	list, err := d.obd(t, "list")
	if err != nil || !strings.Contains(list, img) || !strings.Contains(list, "fuse") {
		t.Errorf("list: %v\n%s", err, list)
	}
	// Detach while mounted fails cleanly; after umount it succeeds.
	if out, err := d.obd(t, "detach", img); err == nil {
		t.Errorf("detach of a mounted device succeeded: %s", out)
	}
	mustRun(t, "umount", mnt)
	if out, err := d.obd(t, "detach", img); err != nil {
		t.Fatalf("detach: %v\n%s\n%s", err, out, d.logText())
	}
	if list, _ := d.obd(t, "list"); strings.Contains(list, img) {
		t.Errorf("device still listed after detach:\n%s", list)
	}
	if _, err := os.Stat(img); err == nil {
		t.Error("image file still exists after detach")
	}
}

// TestAttachBadConfig: a missing or corrupt layer fails the attach with a clear
// message in the result file and leaves no device behind.
func TestAttachBadConfig(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	d := startDaemon(t, dir)
	defer d.stop(t)
	corrupt := filepath.Join(dir, "corrupt.layer")
	b, _ := os.ReadFile(helloBlob)
	b[100000] ^= 0xff // inside a compressed block: the ZFile block CRC catches it on read
	os.WriteFile(corrupt, b[:400000], 0o644)
	for name, lower := range map[string]string{"missing": filepath.Join(dir, "nope"), "truncated": corrupt} {
		cfg := filepath.Join(dir, name+".json")
		os.WriteFile(cfg, []byte(`{"lowers":[{"file":"`+lower+`"}],"resultFile":"`+name+`.result"}`), 0o644)
		out, err := d.obd(t, "attach", "--frontend", "fuse", "--config", cfg)
		if err == nil {
			t.Errorf("%s: attach succeeded: %s", name, out)
		}
		res, _ := os.ReadFile(filepath.Join(dir, name+".result"))
		if !strings.HasPrefix(string(res), "failed:") || !strings.Contains(string(res), "layer 0") {
			t.Errorf("%s: result file %q", name, res)
		}
	}
	if list, _ := d.obd(t, "list"); strings.Count(strings.TrimSpace(list), "\n") != 0 {
		t.Errorf("devices left behind:\n%s", list)
	}
}

// TestForegroundWritable serves a writable image in the foreground, writes through a
// loop-mounted ext4, stops with SIGTERM, and finds the files after a second attach.
func TestForegroundWritable(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	mustRun(t, bin("obd"), "create", filepath.Join(dir, "data"), filepath.Join(dir, "index"), "256M")
	cfg := filepath.Join(dir, "rw.json")
	os.WriteFile(cfg, []byte(`{"lowers":[],"upper":{"data":"data","index":"index"},"resultFile":"result"}`), 0o644)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	payload := strings.Repeat("obd writes survive a detach\n", 4096)
	for round := 0; round < 2; round++ {
		cmd := exec.Command(bin("obd"), "attach", "--foreground", "--frontend", "fuse", "--run-dir", filepath.Join(dir, "run"), "--config", cfg)
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			if sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		var img string
		select {
		case img = <-lines:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			t.Fatal("no device path within 60 s")
		}
		if round == 0 {
			mustRun(t, "mkfs.ext4", "-q", "-F", img)
			mustRun(t, "mount", "-o", "loop", img, mnt)
			if err := os.WriteFile(filepath.Join(mnt, "f.txt"), []byte(payload), 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			mustRun(t, "mount", "-o", "loop", img, mnt)
			got, err := os.ReadFile(filepath.Join(mnt, "f.txt"))
			if err != nil || string(got) != payload {
				t.Fatalf("after re-attach: %v, %d bytes", err, len(got))
			}
		}
		mustRun(t, "umount", mnt)
		// The loop device is released asynchronously after umount.
		time.Sleep(500 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("foreground attach exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatal("foreground attach did not exit within 30 s of SIGTERM")
		}
	}
}

// TestOverlaybdAttachAndDaemonRestart drives the daemon with overlaybd-attach, kills the
// daemon with SIGKILL, and checks that a restarted daemon serves the device again at the
// same path from its state directory.
func TestOverlaybdAttachAndDaemonRestart(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	cfg := helloConfig(t, dir, "")
	d := startDaemon(t, dir)
	attach := func(args ...string) (string, error) {
		return run(t, time.Minute, bin("overlaybd-attach"), append([]string{"--socket", d.socket, "--frontend", "fuse"}, args...)...)
	}
	out, err := attach(cfg)
	if err != nil {
		t.Fatalf("overlaybd-attach: %v\n%s", err, out)
	}
	img := firstLine(out)
	if !strings.HasSuffix(img, "/image") {
		t.Fatalf("overlaybd-attach printed %q", img)
	}
	d.kill()
	// The FUSE mount of the dead daemon is gone: reading fails until the restart.
	d.start(t)
	list, err := d.obd(t, "list", "--json")
	if err != nil || !strings.Contains(list, img) {
		t.Fatalf("restarted daemon does not list %s: %v\n%s\n%s", img, err, list, d.logText())
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mustRun(t, "mount", "-t", "ext4", "-o", "loop,ro", img, mnt)
	if got := fileSHA(t, filepath.Join(mnt, "hello")); got != helloSHA {
		t.Errorf("/hello after daemon restart: sha256 %s", got)
	}
	mustRun(t, "umount", mnt)
	time.Sleep(300 * time.Millisecond)
	if out, err := attach("--detach", img); err != nil {
		t.Fatalf("overlaybd-attach --detach: %v\n%s", err, out)
	}
	if _, err := attach(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("overlaybd-attach of a missing config succeeded")
	}
	d.stop(t)
}
