package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// needContainerd installs Debian's containerd and runc when they are missing.
func needContainerd(t testing.TB) {
	t.Helper()
	for _, c := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(c); err != nil {
			if out, err := run(t, 10*time.Minute, "apt-get", "install", "-y", "--no-install-recommends", "containerd", "runc"); err != nil {
				t.Fatalf("needs %s, and apt-get install containerd runc failed: %v\n%s", c, err, out)
			}
			return
		}
	}
}

// containerdEnv is a private containerd (root, state and socket under a temp dir)
// with obd's snapshotter as the proxy plugin "overlaybd" over an obd daemon.
type containerdEnv struct {
	dir       string
	daemon    *daemonProc
	snapCfg   string
	snapSock  string
	snapRoot  string
	snap      *exec.Cmd
	snapLog   string
	sock      string
	ctrd      *exec.Cmd
	ctrdLog   string
	namespace string
}

func startContainerdEnv(t testing.TB, snapConfig map[string]any, daemonArgs ...string) *containerdEnv {
	t.Helper()
	needRoot(t)
	needContainerd(t)
	dir := t.TempDir()
	e := &containerdEnv{dir: dir, snapSock: filepath.Join(dir, "snap.sock"), snapRoot: filepath.Join(dir, "snroot"),
		sock: filepath.Join(dir, "containerd.sock"), namespace: "obdtest"}
	os.Mkdir(filepath.Join(dir, "obd"), 0o755)
	e.daemon = startDaemon(t, filepath.Join(dir, "obd"), append([]string{"--cache-dir", filepath.Join(dir, "cache")}, daemonArgs...)...)
	cfg := map[string]any{"root": e.snapRoot, "address": e.snapSock}
	for k, v := range snapConfig {
		cfg[k] = v
	}
	b, _ := json.Marshal(cfg)
	e.snapCfg = filepath.Join(dir, "snapshotter.json")
	if err := os.WriteFile(e.snapCfg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	e.startSnapshotter(t)
	toml := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[proxy_plugins.overlaybd]
  type = "snapshot"
  address = %q
`, filepath.Join(dir, "cd-root"), filepath.Join(dir, "cd-state"), e.sock, e.snapSock)
	tomlPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(tomlPath, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctrdLog = filepath.Join(dir, "containerd.log")
	e.ctrd = startLogged(t, e.ctrdLog, "containerd", "--config", tomlPath)
	waitFor(t, "containerd", e.ctrdLog, func() bool {
		_, err := run(t, 10*time.Second, "ctr", "-a", e.sock, "version")
		return err == nil
	})
	t.Cleanup(func() {
		// Containers first, then containerd, the snapshotter and the daemon.
		e.ctr(t, "task", "kill", "-s", "KILL", "c1")
		stopProc(e.ctrd)
		stopProc(e.snap)
		// Image layers still attached (a failed test, or autoRemoveDev off): their
		// mounts and loop devices go first, so that the daemon can stop its devices.
		exec.Command("sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount").Run()
		// (A read-only layer's outer loop device sits on the loop device over the file.)
		exec.Command("sh", "-c", "for l in $(losetup --list --noheadings --output NAME,BACK-FILE | grep ' "+dir+"' | cut -d' ' -f1); do "+
			"losetup --list --noheadings --output NAME,BACK-FILE | grep \" $l\\$\" | cut -d' ' -f1 | xargs -r -n1 losetup -d; losetup -d $l; done").Run()
		e.daemon.stop(t)
		exec.Command("sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l").Run()
	})
	return e
}

func (e *containerdEnv) startSnapshotter(t testing.TB) {
	t.Helper()
	e.snapLog = filepath.Join(e.dir, "snapshotter.log")
	e.snap = startLogged(t, e.snapLog, bin("obd"), "--log-level", "debug", "snapshotter",
		"--config", e.snapCfg, "--socket", e.daemon.socket, "--frontend", "fuse")
	waitFor(t, "snapshotter", e.snapLog, func() bool {
		_, err := os.Stat(e.snapSock)
		return err == nil
	})
}

func startLogged(t testing.TB, logPath, name string, args ...string) *exec.Cmd {
	t.Helper()
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	log.Close()
	return cmd
}

func stopProc(cmd *exec.Cmd) {
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func waitFor(t testing.TB, what, logPath string, ok func() bool) {
	t.Helper()
	for i := 0; i < 300; i++ {
		if ok() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	t.Fatalf("%s did not come up within 30 s:\n%s", what, b)
}

func (e *containerdEnv) ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return run(t, 2*time.Minute, "ctr", append([]string{"-a", e.sock, "-n", e.namespace}, args...)...)
}

func (e *containerdEnv) mustCtr(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.ctr(t, args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s\n--- snapshotter log:\n%s", strings.Join(args, " "), err, out, e.logs())
	}
	return out
}

func (e *containerdEnv) logs() string {
	s, _ := os.ReadFile(e.snapLog)
	d := e.daemon.logText()
	const max = 6000
	if len(s) > max {
		s = s[len(s)-max:]
	}
	if len(d) > max {
		d = d[len(d)-max:]
	}
	return string(s) + "\n--- daemon log:\n" + d
}

// devices is the obd daemon's device count.
func (e *containerdEnv) devices(t testing.TB) int {
	t.Helper()
	out, err := e.daemon.obd(t, "list", "--json")
	if err != nil {
		t.Fatalf("obd list: %v\n%s", err, out)
	}
	var devs []json.RawMessage
	if err := json.Unmarshal([]byte(out), &devs); err != nil {
		t.Fatalf("obd list --json: %v\n%s", err, out)
	}
	return len(devs)
}

// waitDevices waits up to 30 s for the daemon to hold want devices and returns the last count.
func (e *containerdEnv) waitDevices(t testing.TB, want int) int {
	t.Helper()
	n := e.devices(t)
	for i := 0; i < 300 && n != want; i++ {
		time.Sleep(100 * time.Millisecond)
		n = e.devices(t)
	}
	return n
}

// snapshotDirs counts <root>/snapshots/<id> directories.
func (e *containerdEnv) snapshotDirs(t *testing.T) int {
	entries, err := os.ReadDir(filepath.Join(e.snapRoot, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// TestContainerdRunLazy: `obd rpull` of the hello-world overlaybd image, then
// `ctr run --snapshotter overlaybd` prints the greeting with fewer bytes fetched
// than the layer blob; removing the container and the image detaches the device.
// A stock `ctr image pull` of the same image (full download) runs too.
func TestContainerdRunLazy(t *testing.T) {
	e := startContainerdEnv(t, map[string]any{"autoRemoveDev": true})
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/hello-world:amd64-converted"

	if out, err := run(t, 2*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, ref); err != nil {
		t.Fatalf("obd rpull: %v\n%s\n%s", err, out, e.logs())
	}
	// The image config (584 bytes) is the only blob a lazy pull fetches.
	if got := proxy.BlobBytes(); got > 584 {
		t.Errorf("rpull fetched %d blob bytes, want only the 584-byte config: the layer must stay remote", got)
	}
	cfgs, _ := filepath.Glob(filepath.Join(e.snapRoot, "snapshots", "*", "block", "config.v1.json"))
	if len(cfgs) != 1 {
		t.Fatalf("%d config.v1.json after rpull, want 1", len(cfgs))
	}
	if st, err := os.Stat(cfgs[0]); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("config.v1.json mode: %v %v, want 0600", st.Mode(), err)
	}
	out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", ref, "c1")
	if !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("ctr run printed:\n%s", out)
	}
	fetched := proxy.BlobBytes()
	t.Logf("lazy run: %d of %d blob bytes from the registry", fetched, helloBlobSize)
	if fetched >= helloBlobSize {
		t.Errorf("fetched %d blob bytes, want fewer than the blob's %d", fetched, helloBlobSize)
	}
	// containerd removes a deleted container's snapshot at its next garbage collection.
	if n := e.waitDevices(t, 0); n != 0 {
		t.Errorf("%d devices after the container's removal (autoRemoveDev), want 0", n)
	}
	e.mustCtr(t, "image", "rm", "--sync", ref)
	if n := e.snapshotDirs(t); n != 0 {
		t.Errorf("%d snapshot directories after the image's removal, want 0", n)
	}

	// Stock pull: containerd downloads the layer, whose tar holds overlaybd.commit.
	e.mustCtr(t, "image", "pull", "--plain-http", "--snapshotter", "overlaybd", ref)
	commits, _ := filepath.Glob(filepath.Join(e.snapRoot, "snapshots", "*", "fs", "overlaybd.commit"))
	if len(commits) != 1 {
		t.Errorf("%d overlaybd.commit after a full pull, want 1", len(commits))
	}
	out = e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", ref, "c1")
	if !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("ctr run after a full pull printed:\n%s", out)
	}
	e.mustCtr(t, "image", "rm", "--sync", ref)
	if n := e.waitDevices(t, 0); n != 0 {
		t.Errorf("%d devices after the image's removal, want 0", n)
	}
}

// TestContainerdPrivateRegistry: with a token-protected registry, `obd rpull`
// takes the credentials from the global config's credentialConfig (as `obd attach
// REF` and the daemon do) and the container runs; without them the pull is refused.
func TestContainerdPrivateRegistry(t *testing.T) {
	const user, pass = "alice", "s3cr3t-pa55w0rd"
	reg := registrytest.New(t, registrytest.WithTokenAuth(user, pass, 0))
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	dir := t.TempDir()
	creds := filepath.Join(dir, "cred.json")
	os.WriteFile(creds, []byte(`{"auths": {"`+reg.Host+`": {"username": "`+user+`", "password": "`+pass+`"}}}`), 0o600)
	global := filepath.Join(dir, "overlaybd.json")
	os.WriteFile(global, []byte(`{"credentialConfig": {"mode": "file", "path": "`+creds+`"}}`), 0o644)
	e := startContainerdEnv(t, nil, "--config", global)
	ref := reg.Host + "/hello-world:amd64-converted"
	rpull := []string{"rpull", "--containerd-address", e.sock, "--namespace", e.namespace}
	if out, err := run(t, 2*time.Minute, bin("obd"), append(rpull, "--config", filepath.Join(dir, "none.json"), ref)...); err == nil {
		t.Fatalf("rpull without credentials succeeded:\n%s", out)
	}
	if out, err := run(t, 2*time.Minute, bin("obd"), append(rpull, "--config", global, ref)...); err != nil {
		t.Fatalf("obd rpull with credentials: %v\n%s\n%s", err, out, e.logs())
	}
	if out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", ref, "c1"); !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("ctr run printed:\n%s", out)
	}
}
