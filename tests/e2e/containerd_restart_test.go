package e2e

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// TestContainerdDaemonRestart: the obd daemon serving a running container's image
// layer (FUSE frontend, read-only loop device under the overlay) is killed with
// SIGKILL and started again; the container keeps reading its root file system
// (a file it never read before, so the reads reach the device), and a new
// container from the same image runs on the same device.
func TestContainerdDaemonRestart(t *testing.T) {
	e := startContainerdEnv(t, nil)
	reg := registrytest.New(t)
	// Files of pseudo-random data the containers read only after the restart: no
	// page cache holds them, every read goes through the loop device to the daemon.
	files := map[string][]byte{"big1": make([]byte, 8<<20), "big2": make([]byte, 8<<20)}
	rnd := rand.New(rand.NewSource(11))
	want := map[string]string{}
	for name, b := range files {
		rnd.Read(b)
		sum := md5.Sum(b)
		want[name] = hex.EncodeToString(sum[:])
	}
	reg.PushImage(t, "busybox", "big", withCmd(t, registrytest.LayersImage(t, busyboxLayer(t, files)), "sh"))
	ref := reg.Ref("busybox:big")
	if out, err := run(t, 2*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, ref); err != nil {
		t.Fatalf("obd rpull: %v\n%s\n%s", err, out, e.logs())
	}
	// runc keeps its state per namespace and id under /run, outside the private
	// containerd: ids of this test's own, and the task gone before containerd stops.
	const running = "restart-c1"
	t.Cleanup(func() { e.killTask(t, running) })
	e.mustCtr(t, "run", "-d", "--snapshotter", "overlaybd", ref, running, "sh", "-c", "exec sleep 3600")
	// The task is up once an exec in it works.
	var out string
	var err error
	for i := 0; i < 100; i++ {
		if out, err = e.ctr(t, "task", "exec", "--exec-id", "up"+strings.Repeat("x", i), running, "ls", "/"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || !strings.Contains(out, "big1") {
		t.Fatalf("ls / in the container: %v %q\n%s", err, out, e.logs())
	}
	// A container on its own writable device (rwMode dir, by label): a writable
	// loop device cannot move to the restarted daemon's file; the container works
	// again, with what it wrote and synced before, once it is started anew.
	const writer = "restart-w"
	t.Cleanup(func() { e.killTask(t, writer) })
	e.mustCtr(t, "run", "-d", "--snapshotter", "overlaybd", "--snapshotter-label", "containerd.io/snapshot/overlaybd.writable=dir",
		ref, writer, "sh", "-c", "echo run >> /w; sync; touch /synced; exec sleep 3600")
	if out, err := e.waitExec(t, writer, "/synced", "ls", "/synced"); err != nil {
		t.Fatalf("the writer did not sync /w: %v %q\n%s", err, out, e.logs())
	}
	if n := e.devices(t); n != 2 {
		t.Fatalf("%d devices with the containers running, want 2 (the image layer's, the writer's)", n)
	}

	e.daemon.kill()
	e.daemon.start(t)

	statesOut, err := e.daemon.obd(t, "list", "--json")
	if err != nil {
		t.Fatalf("obd list: %v\n%s", err, statesOut)
	}
	var devs []struct {
		State        string `json:"state"`
		RestoreError string `json:"restoreError"`
	}
	if err := json.Unmarshal([]byte(statesOut), &devs); err != nil {
		t.Fatalf("obd list --json: %v\n%s", err, statesOut)
	}
	if len(devs) != 2 || devs[0].State != "live" || devs[1].State != "live" {
		t.Errorf("devices after the daemon restart: %s, want two live devices\n%s", statesOut, e.logs())
	}
	out, err = e.ctr(t, "task", "exec", "--exec-id", "after", running, "md5sum", "/big1")
	if err != nil || !strings.Contains(out, want["big1"]) {
		t.Errorf("md5sum /big1 in the running container after the daemon restart: %v %q, want %s\n%s", err, out, want["big1"], e.logs())
	}
	out, err = e.ctr(t, "run", "--snapshotter", "overlaybd", "--rm", ref, "restart-c2", "md5sum", "/big2")
	if err != nil || !strings.Contains(out, want["big2"]) {
		t.Errorf("md5sum /big2 in a new container after the daemon restart: %v %q, want %s\n%s", err, out, want["big2"], e.logs())
	}
	if _, err := e.ctr(t, "task", "kill", "-s", "KILL", writer); err != nil {
		t.Fatalf("kill the writer: %v", err)
	}
	e.waitTaskGone(t, writer)
	e.mustCtr(t, "task", "start", "-d", writer)
	out, err = e.waitExec(t, writer, "run\nrun", "cat", "/w")
	if err != nil {
		t.Errorf("/w of the writer started again after the daemon restart: %v %q, want two runs' lines\n%s", err, out, e.logs())
	}
	// Its writes reach the device (a dead one fails the fsync with EIO).
	if out, err := e.ctr(t, "task", "exec", "--exec-id", "fsync", writer, "dd", "if=/big1", "of=/copy", "bs=1M", "conv=fsync"); err != nil {
		t.Errorf("dd conv=fsync in the writer started again after the daemon restart: %v %q\n%s", err, out, e.logs())
	}
	e.killTask(t, writer)

	// The moved devices detach as usual: with the container and the image gone,
	// no device, loop device or mount is left.
	e.killTask(t, running)
	e.mustCtr(t, "image", "rm", "--sync", ref)
	if n := e.waitDevices(t, 0); n != 0 {
		t.Errorf("%d devices after the image's removal, want 0\n%s", n, e.logs())
	}
	if out, _ := run(t, time.Minute, "losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"); strings.Contains(out, e.dir) {
		t.Errorf("loop devices left over the test's files:\n%s", out)
	}
}

// waitExec runs cmd in the task id until its output contains want (up to 10 s).
func (e *containerdEnv) waitExec(t testing.TB, id, want string, cmd ...string) (string, error) {
	t.Helper()
	var out string
	var err error
	for i := 0; i < 100; i++ {
		out, err = e.ctr(t, append([]string{"task", "exec", "--exec-id", fmt.Sprintf("wait%d", i), id}, cmd...)...)
		if err == nil && strings.Contains(out, want) {
			return out, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err == nil {
		err = fmt.Errorf("output without %q", want)
	}
	return out, err
}

// waitTaskGone deletes the (killed) task id, waiting up to 10 s for it to stop.
func (e *containerdEnv) waitTaskGone(t testing.TB, id string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if _, err := e.ctr(t, "task", "rm", id); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("task %s did not stop", id)
}

// killTask kills and deletes the task and the container id, if they exist.
func (e *containerdEnv) killTask(t testing.TB, id string) {
	t.Helper()
	if _, err := e.ctr(t, "task", "kill", "-s", "KILL", id); err == nil {
		e.waitTaskGone(t, id)
	}
	e.ctr(t, "container", "rm", id)
}
