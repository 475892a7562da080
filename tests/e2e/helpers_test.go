// Package e2e runs the obd binaries against real components on this host: a real
// daemon process, FUSE, loop devices and ext4. The ublk path runs in a VM (tests/vm).
package e2e

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "obd-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	if out, err := exec.Command("go", "build", "-o", dir+"/", "../../cmd/...").CombinedOutput(); err != nil {
		panic("go build: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

const golden = "../../testdata/golden"

const (
	helloBlob = golden + "/hello-world-oci/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d"
	helloSHA  = "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014"
)

// needRoot skips tests that mount file systems when not run as root; CI runs as root.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount, loop devices, FUSE)")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
}

// extractBase writes the golden ext4 base layer ext4_64 into dir.
func extractBase(t *testing.T, dir string) string {
	t.Helper()
	f, err := os.Open(golden + "/ext4_64.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatal("ext4_64 not in ext4_64.tar.gz")
		}
		if filepath.Base(h.Name) == "ext4_64" {
			out := filepath.Join(dir, "ext4_64")
			w, err := os.Create(out)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, tr); err != nil {
				t.Fatal(err)
			}
			w.Close()
			return out
		}
	}
}

// helloConfig writes a config.v1.json stacking the base layer and the hello-world layer.
func helloConfig(t *testing.T, dir string, upper string) string {
	t.Helper()
	base := extractBase(t, dir)
	hello, _ := filepath.Abs(helloBlob)
	cfg := fmt.Sprintf(`{"lowers":[{"file":%q},{"file":%q}],"resultFile":"result"%s}`, base, hello, upper)
	p := filepath.Join(dir, "config.v1.json")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s %v: timed out after %v", name, args, timeout)
	}
	return string(out), err
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, 2*time.Minute, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// daemonProc is a running `obd daemon` with private directories.
type daemonProc struct {
	cmd      *exec.Cmd
	extra    []string // more daemon flags
	socket   string
	stateDir string
	runDir   string
	log      *os.File
}

func startDaemon(t testing.TB, root string, extra ...string) *daemonProc {
	t.Helper()
	d := &daemonProc{socket: filepath.Join(root, "obd.sock"), stateDir: filepath.Join(root, "state"), runDir: filepath.Join(root, "run"), extra: extra}
	d.start(t)
	return d
}

func (d *daemonProc) start(t testing.TB) {
	t.Helper()
	log, err := os.OpenFile(filepath.Join(filepath.Dir(d.socket), "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	d.log = log
	args := append([]string{"--log-level", "debug", "daemon", "--config", "/nonexistent/overlaybd.json",
		"--socket", d.socket, "--state-dir", d.stateDir, "--run-dir", d.runDir}, d.extra...)
	d.cmd = exec.Command(bin("obd"), args...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(d.socket); err == nil {
			if _, err := d.obd(t, "list"); err == nil {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("daemon did not come up:\n%s", d.logText())
}

func (d *daemonProc) logText() string {
	b, _ := os.ReadFile(d.log.Name())
	return string(b)
}

func (d *daemonProc) obd(t testing.TB, args ...string) (string, error) {
	t.Helper()
	// Flags go before positional arguments (urfave/cli stops parsing flags at the first one).
	full := append([]string{args[0], "--socket", d.socket}, args[1:]...)
	return run(t, 2*time.Minute, bin("obd"), full...)
}

// stop sends SIGTERM and waits; the daemon detaches its devices.
func (d *daemonProc) stop(t testing.TB) {
	t.Helper()
	d.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("daemon did not exit within 30 s of SIGINT:\n%s", d.logText())
	}
	d.log.Close()
}

func (d *daemonProc) kill() {
	d.cmd.Process.Kill()
	d.cmd.Wait()
	d.log.Close()
}

func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return strings.TrimSpace(sc.Text())
	}
	return ""
}

// fgAttach is `obd attach --foreground` with its stderr in a file, so a test can
// wait for a log line.
type fgAttach struct {
	cmd    *exec.Cmd
	path   string
	stderr string
}

// startFG runs `obd attach --foreground ARGS...` and waits for the path it prints first.
func startFG(t *testing.T, args ...string) *fgAttach {
	t.Helper()
	errPath := filepath.Join(t.TempDir(), "stderr")
	ef, err := os.Create(errPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	cmd := exec.Command(bin("obd"), append([]string{"attach", "--foreground"}, args...)...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = ef
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &fgAttach{cmd: cmd, stderr: errPath}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			cmd.Wait()
			t.Fatalf("attach printed nothing:\n%s", a.log())
		}
		a.path = l
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("no device path within 2 min:\n%s", a.log())
	}
	return a
}

func (a *fgAttach) log() string {
	b, _ := os.ReadFile(a.stderr)
	return string(b)
}

func (a *fgAttach) waitLog(t *testing.T, s string) {
	t.Helper()
	for i := 0; i < 600; i++ {
		if strings.Contains(a.log(), s) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no %q in the attach's log within 60 s:\n%s", s, a.log())
}

func (a *fgAttach) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("attach exited with %v\n%s", err, a.log())
		}
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		t.Errorf("attach did not exit within 30 s of SIGTERM")
	}
}

// mountHello mounts the device read-only, checks /hello and unmounts.
func mountHello(t *testing.T, img, mnt string) {
	t.Helper()
	mustRun(t, "mount", "-t", "ext4", "-o", "loop,ro", img, mnt)
	if got := fileSHA(t, filepath.Join(mnt, "hello")); got != helloSHA {
		t.Errorf("/hello sha256 %s", got)
	}
	mustRun(t, "umount", mnt)
	time.Sleep(300 * time.Millisecond)
}
