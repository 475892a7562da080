package e2e

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
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
	if n := e.devices(t); n != 1 {
		t.Fatalf("%d devices with the container running, want 1 (the image layer's)", n)
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
	if len(devs) != 1 || devs[0].State != "live" {
		t.Errorf("devices after the daemon restart: %s, want one live device\n%s", statesOut, e.logs())
	}
	out, err = e.ctr(t, "task", "exec", "--exec-id", "after", running, "md5sum", "/big1")
	if err != nil || !strings.Contains(out, want["big1"]) {
		t.Errorf("md5sum /big1 in the running container after the daemon restart: %v %q, want %s\n%s", err, out, want["big1"], e.logs())
	}
	out, err = e.ctr(t, "run", "--snapshotter", "overlaybd", "--rm", ref, "restart-c2", "md5sum", "/big2")
	if err != nil || !strings.Contains(out, want["big2"]) {
		t.Errorf("md5sum /big2 in a new container after the daemon restart: %v %q, want %s\n%s", err, out, want["big2"], e.logs())
	}
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

// killTask kills and deletes the task and the container id, if they exist.
func (e *containerdEnv) killTask(t testing.TB, id string) {
	t.Helper()
	if _, err := e.ctr(t, "task", "kill", "-s", "KILL", id); err == nil {
		for i := 0; i < 100; i++ {
			if _, err := e.ctr(t, "task", "rm", id); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	e.ctr(t, "container", "rm", id)
}
