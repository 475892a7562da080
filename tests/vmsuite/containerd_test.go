//go:build vmsuite

package vmsuite

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/obd-project/obd/registry/registrytest"
)

// Debian's containerd, ctr, containerd-shim-runc-v2 and runc come into the guest at
// their host paths (tests/vm/obd-suite.sh copies them with run-in-vm.sh -b).

// guestContainerd is a private containerd in the guest with obd's snapshotter as the
// proxy plugin "overlaybd", over an obd daemon serving ublk devices.
type guestContainerd struct {
	dir, sock, ns          string
	snapRoot, snapLog      string
	ctrdLog                string
	d                      *daemon
	snap, ctrd             *exec.Cmd
	snapConfig, snapSocket string
}

func startGuestContainerd(t *testing.T) *guestContainerd {
	t.Helper()
	for _, c := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s is not in the guest (obd-suite.sh copies Debian's containerd and runc with -b): %v", c, err)
		}
	}
	// runc creates the containers' cgroups; the guest's init mounts no cgroup file system.
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		must(t, "mount", "-t", "cgroup2", "none", "/sys/fs/cgroup")
	}
	dir := t.TempDir()
	e := &guestContainerd{dir: dir, sock: filepath.Join(dir, "containerd.sock"), ns: "obdvm",
		snapRoot: filepath.Join(dir, "snroot"), snapSocket: filepath.Join(dir, "snap.sock")}
	e.d = newDaemon(t, "--cache-dir", filepath.Join(dir, "cache"))
	e.snapConfig = writeConfig(t, dir, "snapshotter.json", fmt.Sprintf(`{"root":%q,"address":%q}`, e.snapRoot, e.snapSocket))
	e.snapLog = filepath.Join(dir, "snapshotter.log")
	e.snap = startLogged(t, e.snapLog, obdBin, "--log-level", "debug", "snapshotter",
		"--config", e.snapConfig, "--socket", e.d.socket, "--frontend", "ublk")
	e.waitFor(t, "snapshotter", func() bool { _, err := os.Stat(e.snapSocket); return err == nil })
	toml := writeConfig(t, dir, "containerd.toml", fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[proxy_plugins.overlaybd]
  type = "snapshot"
  address = %q
`, filepath.Join(dir, "cd-root"), filepath.Join(dir, "cd-state"), e.sock, e.snapSocket))
	e.ctrdLog = filepath.Join(dir, "containerd.log")
	e.ctrd = startLogged(t, e.ctrdLog, "containerd", "--config", toml)
	e.waitFor(t, "containerd", func() bool { _, err := run(20*time.Second, "ctr", "-a", e.sock, "version"); return err == nil })
	t.Cleanup(func() {
		for _, c := range []string{"c1", "w1"} {
			e.ctr("task", "kill", "-s", "KILL", c)
		}
		stopProc(e.ctrd)
		stopProc(e.snap)
		exec.Command("sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l").Run()
		e.d.stop(t)
	})
	return e
}

func startLogged(t *testing.T, logPath, name string, args ...string) *exec.Cmd {
	t.Helper()
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func stopProc(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// waitFor polls ok for up to 2 minutes (the guest is emulated: everything is slow).
func (e *guestContainerd) waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("%s: not within 2 minutes\n%s", what, e.logs())
}

func (e *guestContainerd) ctr(args ...string) (string, error) {
	return run(5*time.Minute, "ctr", append([]string{"-a", e.sock, "-n", e.ns}, args...)...)
}

func (e *guestContainerd) mustCtr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.ctr(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s\n%s", strings.Join(args, " "), err, out, e.logs())
	}
	return out
}

func tail(path string, max int) string {
	b, _ := os.ReadFile(path)
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func (e *guestContainerd) logs() string {
	return "--- snapshotter log:\n" + tail(e.snapLog, 5000) + "\n--- containerd log:\n" + tail(e.ctrdLog, 3000) +
		"\n--- daemon log:\n" + tail(e.d.logPath, 5000)
}

// devices is the daemon's device list.
func (e *guestContainerd) devices(t *testing.T) []struct {
	ID   int    `json:"id"`
	Path string `json:"path"`
} {
	t.Helper()
	out, err := e.d.obd("list", "--json")
	if err != nil {
		t.Fatalf("obd list: %v\n%s", err, out)
	}
	var devs []struct {
		ID   int    `json:"id"`
		Path string `json:"path"`
	}
	if err := json.Unmarshal([]byte(out), &devs); err != nil {
		t.Fatalf("obd list --json: %v\n%s", err, out)
	}
	return devs
}

// busyboxImage builds a one-layer overlaybd image holding the guest's static busybox
// (the initramfs's /bin/busybox) with `obd convert --from-tar`.
func busyboxImage(t *testing.T, reg *registrytest.Registry) string {
	t.Helper()
	dir := t.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	tf, err := os.Create(filepath.Join(dir, "rootfs.tar"))
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(tf)
	hdrs := []*tar.Header{{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}}
	for _, a := range []string{"sh", "sleep", "cat", "echo", "printf", "sync", "mv", "seq", "wc", "tail"} {
		hdrs = append(hdrs, &tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Name == "bin/busybox" {
			tw.Write(bb)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	lay := filepath.Join(dir, "layout")
	must(t, obdBin, "-q", "convert", "--from-tar", filepath.Join(dir, "rootfs.tar"), lay)
	p, err := layout.FromPath(lay)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("obd convert --from-tar: layout with %v manifests: %v", im, err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	reg.PushImage(t, "busybox", "obd", img)
	return reg.Ref("busybox:obd")
}

// taskPID is the host (guest) PID of a running container's init process.
func (e *guestContainerd) taskPID(t *testing.T, id string) int {
	t.Helper()
	out := e.mustCtr(t, "task", "ls")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == id {
			pid, _ := strconv.Atoi(f[1])
			if f[2] != "RUNNING" {
				t.Fatalf("task %s is %s, not RUNNING\n%s", id, f[2], e.logs())
			}
			return pid
		}
	}
	t.Fatalf("no task %s:\n%s", id, out)
	return 0
}

// rootSource is the device mounted as / in the process's mount namespace.
func rootSource(t *testing.T, pid int) (dev, fstype string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || f[4] != "/" {
			continue
		}
		for i, x := range f {
			if x == "-" && i+2 < len(f) {
				fstype, dev = f[i+1], f[i+2]
			}
		}
	}
	return dev, fstype
}

// lines parses the writer's log: "N PADDING" lines, N from 1 on; a last line without
// its newline (being written) is left out. It returns the count of contiguous lines
// or an error naming the first bad one.
func seqLines(b []byte) (int, error) {
	s := string(b)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return 0, nil
	}
	for i, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != strconv.Itoa(i+1) || f[1] != writerPad {
			return i, fmt.Errorf("line %d is %q, want \"%d %s\"", i+1, l, i+1, writerPad)
		}
	}
	return strings.Count(s, "\n") + 1, nil
}

const writerPad = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// g) containerd in the guest on obd's snapshotter over ublk: the lazily pulled
// hello-world runs from /dev/ublkbN; a container whose writable rootfs is its own
// ublk device (rwMode dev) keeps appending and fsyncing across a kill -9 and restart
// of the obd daemon (ublk recovery), loses nothing and sees no I/O error; removing
// the containers and images afterwards detaches every device.
func TestContainerdUblk(t *testing.T) {
	start := time.Now()
	e := startGuestContainerd(t)
	reg := registrytest.New(t)
	reg.PushLayout(t, helloLayout, "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	helloRef := proxy.Host() + "/hello-world:amd64-converted"
	bbRef := busyboxImage(t, reg)
	for _, ref := range []string{helloRef, bbRef} {
		if out, err := run(5*time.Minute, obdBin, "rpull", "--containerd-address", e.sock, "--namespace", e.ns, ref); err != nil {
			t.Fatalf("obd rpull %s: %v\n%s\n%s", ref, err, out, e.logs())
		}
	}
	if got := proxy.BlobBytes(); got > 584 {
		t.Errorf("rpull fetched %d blob bytes of hello-world, want only the 584-byte config", got)
	}

	// rwMode overlayfs (the default): the image layer is /dev/ublkbN, mounted read-only
	// under the container's overlay. The guest's root is an initramfs, where
	// pivot_root(2) is refused: runc moves the root instead (--no-pivot).
	out := e.mustCtr(t, "run", "--no-pivot", "--snapshotter", "overlaybd", "--rm", helloRef, "c1")
	if !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("ctr run printed:\n%s\n%s", out, e.logs())
	}
	if got := proxy.BlobBytes(); got >= helloBlobSize {
		t.Errorf("fetched %d blob bytes, want fewer than the layer's %d", got, helloBlobSize)
	}
	recs, _ := filepath.Glob(filepath.Join(e.snapRoot, "snapshots", "*", "block", "device.json"))
	var helloDev string
	for _, p := range recs {
		rec, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Block string }
		json.Unmarshal(rec, &r)
		if !strings.HasPrefix(r.Block, "/dev/ublkb") {
			t.Errorf("%s: device %q, want /dev/ublkbN", p, r.Block)
		}
		helloDev = r.Block
	}
	if len(recs) != 1 {
		t.Errorf("%d device.json after the hello-world run, want 1 (the image layer's)", len(recs))
	}
	t.Logf("hello-world ran from %s: %d of %d blob bytes fetched (%v)", helloDev, proxy.BlobBytes(), helloBlobSize, time.Since(start).Round(time.Millisecond))

	// rwMode dev by label: the container's root is its own ublk device (busybox layer
	// + append upper), ext4 on /dev/ublkbN. It appends numbered lines and fsyncs
	// every 16, then renames the fsync'd line number into /synced; any failed write
	// or fsync ends it with a status.
	script := `i=0; while [ $i -lt 10000000 ]; do i=$((i+1)); echo "$i ` + writerPad + `" >> /log || exit 3; ` +
		`if [ $((i % 16)) = 0 ]; then sync /log || exit 4; echo $i > /synced.new && mv /synced.new /synced || exit 5; fi; done`
	e.mustCtr(t, "run", "-d", "--no-pivot", "--snapshotter", "overlaybd",
		"--snapshotter-label", "containerd.io/snapshot/overlaybd.writable=dev", bbRef, "w1", "/bin/sh", "-c", script)
	pid := e.taskPID(t, "w1")
	dev, fstype := rootSource(t, pid)
	if !strings.HasPrefix(dev, "/dev/ublkb") || fstype != "ext4" {
		t.Fatalf("writer's root is %s (%s), want ext4 on /dev/ublkbN", dev, fstype)
	}
	logPath := fmt.Sprintf("/proc/%d/root/log", pid)
	count := func() int {
		b, err := os.ReadFile(logPath)
		if os.IsNotExist(err) { // not written yet
			return 0
		}
		if err != nil {
			t.Fatalf("%s: %v\n%s", logPath, err, e.logs())
		}
		n, err := seqLines(b)
		if err != nil {
			t.Fatalf("the writer's log: %v", err)
		}
		return n
	}
	e.waitFor(t, "writer's first 200 lines", func() bool { return count() >= 200 })

	before := count()
	devsBefore := e.devices(t)
	e.d.cmd.Process.Kill() // SIGKILL: the devices stay, quiesced, until a daemon recovers them
	e.d.cmd.Wait()
	killed := time.Now()
	e.d.start(t)
	restarted := count()
	e.waitFor(t, "writer's progress after the restart", func() bool { return count() >= restarted+200 })
	t.Logf("daemon killed at line %d, back after %v at line %d, writer at line %d now",
		before, time.Since(killed).Round(time.Millisecond), restarted, count())
	if devsAfter := e.devices(t); len(devsAfter) != len(devsBefore) {
		t.Errorf("%d devices after the restart, %d before:\n%v\n%v", len(devsAfter), len(devsBefore), devsAfter, devsBefore)
	}
	if !strings.Contains(tail(e.d.logPath, 1<<20), "recovered device") {
		t.Errorf("the restarted daemon recovered no device:\n%s", tail(e.d.logPath, 5000))
	}
	if pid2 := e.taskPID(t, "w1"); pid2 != pid {
		t.Fatalf("the writer's pid changed from %d to %d", pid, pid2)
	}

	// Everything the writer wrote, read back from the recovered device: flush the page
	// cache and drop it, then the log must still be the contiguous sequence.
	must(t, "sync")
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		t.Fatal(err)
	}
	synced, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/synced", pid))
	if err != nil {
		t.Fatal(err)
	}
	lastSynced, err := strconv.Atoi(strings.TrimSpace(string(synced)))
	if err != nil {
		t.Fatalf("/synced in the writer: %q: %v", synced, err)
	}
	final := count()
	if final < lastSynced || lastSynced <= restarted {
		t.Errorf("log has %d contiguous lines from the device, last fsync'd line %d (restart at line %d)", final, lastSynced, restarted)
	}
	t.Logf("%d contiguous lines read back from %s after the recovery, last fsync at line %d", final, dev, lastSynced)
	e.taskPID(t, "w1") // still running: no write or fsync failed

	// The recovered image-layer device still serves a new container.
	if out := e.mustCtr(t, "run", "--no-pivot", "--snapshotter", "overlaybd", "--rm", helloRef, "c1"); !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("ctr run after the daemon's restart printed:\n%s", out)
	}

	// Removal detaches through the restarted daemon (the device ids survived).
	e.mustCtr(t, "task", "kill", "-s", "KILL", "w1")
	e.waitFor(t, "the writer's exit", func() bool {
		_, err := e.ctr("task", "rm", "w1")
		return err == nil
	})
	e.mustCtr(t, "container", "rm", "w1")
	e.mustCtr(t, "image", "rm", "--sync", helloRef, bbRef)
	e.waitFor(t, "every device detached", func() bool { return len(e.devices(t)) == 0 })
	for _, p := range []string{helloDev, dev} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s still exists after the images' removal", p)
		}
	}
	t.Logf("TestContainerdUblk took %v", time.Since(start).Round(time.Millisecond))
}
