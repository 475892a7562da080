//go:build vmsuite

// Package vmsuite is the real-kernel suite: it runs inside a QEMU guest whose kernel
// has ublk_drv (tests/vm/obd-suite.sh builds it with -tags vmsuite and boots the VM),
// driving the real obd binary. Nothing here runs on a host without ublk.
package vmsuite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
)

// The guest's /work holds: obd (binary), ext4_64 (base layer), hello.blob (hello-world
// layer), hello-world-oci (the converted image as an OCI layout).
var (
	work    = envOr("OBD_VM_WORK", "/work")
	obdBin  = filepath.Join(work, "obd")
	baseLay = filepath.Join(work, "ext4_64")
	helloL  = filepath.Join(work, "hello.blob")
)

const helloSHA = "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014"

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

func TestMain(m *testing.M) {
	if _, err := os.Stat("/dev/ublk-control"); err != nil {
		fmt.Println("vmsuite: /dev/ublk-control missing: this suite runs only inside the ublk VM")
		os.Exit(1)
	}
	// The guest's init leaves loopback down; the remote test runs a registry on it.
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		fmt.Printf("vmsuite: ip link set lo up: %v\n%s", err, out)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s %v: timed out after %v", name, args, timeout)
	}
	return string(out), err
}

func must(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(5*time.Minute, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

type daemon struct {
	cmd              *exec.Cmd
	root, socket     string
	stateDir, runDir string
	logPath          string
	extra            []string
}

// newDaemon starts `obd daemon` with private directories and the extra flags.
func newDaemon(t *testing.T, extra ...string) *daemon {
	root := t.TempDir()
	d := &daemon{root: root, socket: filepath.Join(root, "obd.sock"), stateDir: filepath.Join(root, "state"),
		runDir: filepath.Join(root, "run"), logPath: filepath.Join(root, "daemon.log"), extra: extra}
	d.start(t)
	return d
}

func (d *daemon) start(t *testing.T) {
	t.Helper()
	log, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(obdBin, "daemon", "--config", "/nonexistent", "--socket", d.socket, "--state-dir", d.stateDir, "--run-dir", d.runDir)
	d.cmd.Args = append(d.cmd.Args, d.extra...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	log.Close()
	for i := 0; i < 3000; i++ { // up to 5 min: a restart recovers every device first
		if _, err := d.obd("list"); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("daemon did not come up:\n%s", d.log())
}

func (d *daemon) log() string { b, _ := os.ReadFile(d.logPath); return string(b) }

func (d *daemon) obd(args ...string) (string, error) {
	full := append([]string{args[0], "--socket", d.socket}, args[1:]...)
	return run(5*time.Minute, obdBin, full...)
}

func (d *daemon) attach(t *testing.T, cfg string) string {
	t.Helper()
	out, err := d.obd("attach", "--frontend", "ublk", "--config", cfg)
	if err != nil {
		t.Fatalf("attach %s: %v\n%s\n%s", cfg, err, out, d.log())
	}
	p := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	if !strings.HasPrefix(p, "/dev/ublkb") {
		t.Fatalf("attach printed %q first, not a /dev/ublkbN path", p)
	}
	return p
}

func (d *daemon) stop(t *testing.T) {
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("daemon did not exit within 60 s of SIGTERM:\n%s", d.log())
	}
}

func writeConfig(t *testing.T, dir, name, body string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func shaOf(r io.Reader) string {
	h := sha256.New()
	io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil))
}

// libraryImage opens the same stack in-process, to compare the device with.
func libraryImage(t *testing.T, paths ...string) *lsmt.Image {
	var ls []*lsmt.Layer
	for _, p := range paths {
		f, err := layer.OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, f.Layer)
	}
	im, err := lsmt.NewImage(ls, nil)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// a) the golden layers through /dev/ublkbN: raw bytes and the mounted /hello.
func TestGoldenHelloWorld(t *testing.T) {
	d := newDaemon(t)
	defer d.stop(t)
	dir := t.TempDir()
	only := d.attach(t, writeConfig(t, dir, "hello.json", fmt.Sprintf(`{"lowers":[{"file":%q}]}`, helloL)))
	f, err := os.Open(only)
	if err != nil {
		t.Fatal(err)
	}
	got := shaOf(io.LimitReader(f, 64<<20))
	f.Close()
	if got != "3d8fbd5eecce5775369f56d6474998f824b893045b46ff3f47dc3839d9d56fa9" {
		t.Errorf("first 64 MiB of %s (hello-world layer): sha256 %s", only, got)
	}
	stack := d.attach(t, writeConfig(t, dir, "stack.json", fmt.Sprintf(`{"lowers":[{"file":%q},{"file":%q}],"resultFile":"r"}`, baseLay, helloL)))
	f, _ = os.Open(stack)
	dev := shaOf(io.LimitReader(f, 64<<20))
	f.Close()
	want := shaOf(io.NewSectionReader(libraryImage(t, baseLay, helloL), 0, 64<<20))
	if dev != want {
		t.Errorf("first 64 MiB of %s: sha256 %s, the library reads %s", stack, dev, want)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	must(t, "mount", "-t", "ext4", "-o", "ro", stack, mnt)
	hf, err := os.Open(filepath.Join(mnt, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	if got := shaOf(hf); got != helloSHA {
		t.Errorf("/hello sha256 %s", got)
	}
	hf.Close()
	if out, err := d.obd("list"); err != nil || !strings.Contains(out, stack) {
		t.Errorf("list: %v\n%s", err, out)
	}
	if out, err := d.obd("detach", stack); err == nil {
		t.Errorf("detach of a mounted device succeeded: %s", out)
	}
	must(t, "umount", mnt)
	for _, p := range []string{only, stack} {
		if out, err := d.obd("detach", p); err != nil {
			t.Errorf("detach %s: %v\n%s", p, err, out)
		}
	}
	if _, err := os.Stat(stack); err == nil {
		t.Errorf("%s still exists after detach", stack)
	}
}

// b) a writable upper: mkfs, files, detach, re-attach, then commit and read the committed stack.
func TestWritableUpperAndCommit(t *testing.T) {
	d := newDaemon(t)
	defer d.stop(t)
	dir := t.TempDir()
	must(t, obdBin, "create", filepath.Join(dir, "data"), filepath.Join(dir, "index"), "512M")
	cfg := writeConfig(t, dir, "rw.json", `{"lowers":[],"upper":{"data":"data","index":"index"}}`)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	files := map[string][]byte{}
	for i := 0; i < 20; i++ {
		files[fmt.Sprintf("f%02d", i)] = bytes.Repeat([]byte{byte(i), byte(i * 7), 'x'}, 10000*(i+1))
	}
	dev := d.attach(t, cfg)
	must(t, "mkfs.ext4", "-q", "-F", dev)
	must(t, "mount", dev, mnt)
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(mnt, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must(t, "umount", mnt)
	if out, err := d.obd("detach", dev); err != nil {
		t.Fatalf("detach: %v %s", err, out)
	}
	check := func(dev string, opts ...string) {
		t.Helper()
		must(t, "mount", append(opts, dev, mnt)...)
		for n, b := range files {
			got, err := os.ReadFile(filepath.Join(mnt, n))
			if err != nil || !bytes.Equal(got, b) {
				t.Errorf("%s on %s: %v (%d bytes, want %d)", n, dev, err, len(got), len(b))
			}
		}
		must(t, "umount", mnt)
	}
	check(d.attach(t, cfg))
	d.obd("detach", "0")
	d.obd("detach", "1")
	must(t, obdBin, "commit", "-z", "zstd", "--tar", filepath.Join(dir, "data"), filepath.Join(dir, "index"), filepath.Join(dir, "layer.tar"))
	ro := d.attach(t, writeConfig(t, dir, "ro.json", `{"lowers":[{"file":"layer.tar"}]}`))
	check(ro, "-o", "ro")
}

// c) kill -9 of the daemon while a writer runs with fsync: the restarted daemon
// recovers the device; every fsync'd file is intact.
func TestCrashRecovery(t *testing.T) {
	d := newDaemon(t)
	dir := t.TempDir()
	must(t, obdBin, "create", filepath.Join(dir, "data"), filepath.Join(dir, "index"), "256M")
	cfg := writeConfig(t, dir, "rw.json", `{"lowers":[],"upper":{"data":"data","index":"index"}}`)
	dev := d.attach(t, cfg)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	must(t, "mkfs.ext4", "-q", "-F", dev)
	must(t, "mount", dev, mnt)

	content := func(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("file %d ", i)), 4000) }
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f, err := os.Create(filepath.Join(mnt, fmt.Sprintf("w%05d", i)))
			if err == nil {
				_, err = f.Write(content(i))
			}
			if err == nil {
				err = f.Sync()
			}
			if f != nil {
				f.Close()
			}
			if err != nil {
				werr = err
				return
			}
			acked.Store(int64(i + 1))
		}
	}()
	time.Sleep(3 * time.Second)
	before := acked.Load()
	d.cmd.Process.Kill() // SIGKILL: no cleanup at all
	d.cmd.Wait()
	time.Sleep(2 * time.Second) // the writer is now blocked on the quiesced device
	d.start(t)
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("writer failed across the crash: %v\n%s", werr, d.log())
	}
	n := acked.Load()
	if n <= before {
		t.Errorf("no write completed after recovery (%d before the kill, %d at the end)\n%s", before, n, d.log())
	}
	must(t, "umount", mnt)
	must(t, "mount", dev, mnt)
	for i := 0; i < int(n); i++ {
		got, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("w%05d", i)))
		if err != nil || !bytes.Equal(got, content(i)) {
			t.Fatalf("fsync'd file w%05d after recovery: %v (%d bytes)", i, err, len(got))
		}
	}
	must(t, "umount", mnt)
	t.Logf("%d files fsync'd before the kill, %d in all, all intact", before, n)
	d.stop(t)
}

// d) 64 devices attached in parallel, then all detached, within a bounded time.
func TestManyDevices(t *testing.T) {
	const n = 64
	d := newDaemon(t)
	defer d.stop(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "hello.json", fmt.Sprintf(`{"lowers":[{"file":%q}]}`, helloL))
	start := time.Now()
	paths := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out, err := d.obd("attach", "--frontend", "ublk", "--config", cfg)
			paths[i], errs[i] = strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]), err
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, out)
			}
		}(i)
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range paths {
		if errs[i] != nil {
			t.Errorf("attach %d: %v", i, errs[i])
			continue
		}
		if seen[paths[i]] {
			t.Errorf("path %s given twice", paths[i])
		}
		seen[paths[i]] = true
	}
	attachTime := time.Since(start)
	for p := range seen {
		wg.Add(1)
		go func(p string) {
			defer wg.Done()
			if out, err := d.obd("detach", p); err != nil {
				t.Errorf("detach %s: %v %s", p, err, out)
			}
		}(p)
	}
	wg.Wait()
	total := time.Since(start)
	t.Logf("%d devices: attach %v, attach+detach %v", len(seen), attachTime, total)
	if total > 10*time.Minute {
		t.Errorf("64 attaches and detaches took %v (> 10 min)", total)
	}
	if out, _ := d.obd("list"); strings.Contains(out, "/dev/ublkb") {
		t.Errorf("devices left:\n%s", out)
	}
}

// e) bad input: a missing or corrupt layer fails the attach with a clear message in
// resultFile and leaves no device behind.
func TestBadConfig(t *testing.T) {
	d := newDaemon(t)
	defer d.stop(t)
	dir := t.TempDir()
	b, _ := os.ReadFile(helloL)
	os.WriteFile(filepath.Join(dir, "trunc"), b[:len(b)/3], 0o644)
	before, _ := filepath.Glob("/dev/ublkb*")
	for name, file := range map[string]string{"missing": filepath.Join(dir, "nope"), "trunc": filepath.Join(dir, "trunc")} {
		cfg := writeConfig(t, dir, name+".json", fmt.Sprintf(`{"lowers":[{"file":%q}],"resultFile":"%s.result"}`, file, name))
		if out, err := d.obd("attach", "--frontend", "ublk", "--config", cfg); err == nil {
			t.Errorf("%s: attach succeeded: %s", name, out)
		}
		res, _ := os.ReadFile(filepath.Join(dir, name+".result"))
		if !strings.HasPrefix(string(res), "failed:") || !strings.Contains(string(res), "layer 0") {
			t.Errorf("%s: result file %q", name, res)
		}
	}
	after, _ := filepath.Glob("/dev/ublkb*")
	if len(after) != len(before) {
		t.Errorf("devices before %v, after %v", before, after)
	}
}
