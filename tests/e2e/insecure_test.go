package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
	"golang.org/x/sys/unix"
)

// netnsAddr is the registry's address inside the test's network namespace: not
// loopback, so obd applies its plain-HTTP and TLS rules for remote registries.
const netnsAddr = "10.250.0.1"

// newNetns creates a network namespace with lo up and a dummy interface holding
// netnsAddr (lo itself if the kernel has no dummy driver), and returns the path of its handle; t.Cleanup deletes it.
func newNetns(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		// As make test installs what it needs: iproute2 for the namespace.
		if out, err := run(t, 5*time.Minute, "apt-get", "install", "-y", "--no-install-recommends", "iproute2"); err != nil {
			t.Fatalf("needs ip (iproute2), and apt-get install iproute2 failed: %v\n%s", err, out)
		}
	}
	ns := fmt.Sprintf("obdtest-%d", os.Getpid())
	mustRun(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	dev := "obd0"
	if out, err := run(t, time.Minute, "ip", "-n", ns, "link", "add", dev, "type", "dummy"); err != nil {
		// Kernels without the dummy driver (some containers): the address on lo
		// is still not a loopback address, which is what obd decides by.
		t.Logf("no dummy interface (%v: %s), putting %s on lo", err, strings.TrimSpace(out), netnsAddr)
		dev = "lo"
	} else {
		mustRun(t, "ip", "-n", ns, "link", "set", dev, "up")
	}
	mustRun(t, "ip", "-n", ns, "addr", "add", netnsAddr+"/32", "dev", dev)
	return "/var/run/netns/" + ns
}

// listenIn opens a TCP listener on addr inside the network namespace at nsPath.
// The socket stays in that namespace whichever thread later serves it.
func listenIn(t *testing.T, nsPath, addr string) net.Listener {
	t.Helper()
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result)
	go func() {
		// The thread switches namespace and is never unlocked: Go ends it with
		// this goroutine instead of reusing it for others.
		runtime.LockOSThread()
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
		}
		if err != nil {
			ch <- result{err: err}
			return
		}
		l, err := net.Listen("tcp", addr)
		ch <- result{l, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.l
}

// inNetns runs obd in the namespace (nsenter keeps the mount namespace, so a
// FUSE mount is visible to the test).
func inNetns(nsPath string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + nsPath, bin("obd")}, args...)...)
}

func runIn(t *testing.T, nsPath string, args ...string) (string, error) {
	t.Helper()
	cmd := inNetns(nsPath, args...)
	timer := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestInsecureRegistryNotLoopback serves the hello-world image from a plain-HTTP
// and a self-signed TLS registry on a non-loopback address (in a network namespace
// the test creates) and checks that obd refuses both with a message naming
// --insecure-registry, and reads them with the flag or the overlaybd.json key.
func TestInsecureRegistryNotLoopback(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	dir := t.TempDir()
	noConfig := filepath.Join(dir, "none.json")

	plain := registrytest.New(t)
	plain.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	plainHost := plain.ServeOn(t, listenIn(t, ns, netnsAddr+":0"))
	secure := registrytest.New(t, registrytest.WithTLS(nil))
	secure.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	tlsHost := secure.ServeOn(t, listenIn(t, ns, netnsAddr+":0"))

	for _, tc := range []struct {
		name, host, wantHint string
	}{
		{"plain HTTP", plainHost, "speaks plain HTTP"},
		{"self-signed TLS", tlsHost, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := tc.host + "/hello-world:amd64-converted"
			cache := filepath.Join(t.TempDir(), "cache")
			out, err := runIn(t, ns, "pull", "--global-config", noConfig, "--cache-dir", cache, ref)
			if err == nil {
				t.Fatalf("pull from %s without --insecure-registry succeeded:\n%s", tc.host, out)
			}
			if !strings.Contains(out, "--insecure-registry "+tc.host) || !strings.Contains(out, tc.wantHint) {
				t.Fatalf("pull error does not explain itself (want %q and --insecure-registry %s):\n%s", tc.wantHint, tc.host, out)
			}
			mustRunIn(t, ns, "pull", "--global-config", noConfig, "--insecure-registry", tc.host, "--cache-dir", cache, ref)

			// The same through overlaybd.json.
			gc := filepath.Join(t.TempDir(), "overlaybd.json")
			os.WriteFile(gc, []byte(fmt.Sprintf(`{"insecureRegistries":[%q]}`, tc.host)), 0o644)
			mustRunIn(t, ns, "pull", "--global-config", gc, "--cache-dir", filepath.Join(t.TempDir(), "cache"), "--blobs-only", ref)
		})
	}

	// A lazy attach (FUSE) from the plain-HTTP registry reads the image.
	run := filepath.Join(dir, "run")
	cmd := inNetns(ns, "attach", "--foreground", "--frontend", "fuse", "--global-config", noConfig,
		"--insecure-registry", plainHost, "--cache-dir", filepath.Join(dir, "attach-cache"), "--run-dir", run,
		plainHost+"/hello-world:amd64-converted")
	stdout, _ := cmd.StdoutPipe()
	errPath := filepath.Join(dir, "attach.stderr")
	ef, err := os.Create(errPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	cmd.Stderr = ef
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stderr := func() string { b, _ := os.ReadFile(errPath); return string(b) }
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(unix.SIGTERM)
			cmd.Wait()
		}
	}
	defer stop()
	line := make([]byte, 4096)
	n, err := stdout.Read(line)
	if err != nil {
		cmd.Wait()
		t.Fatalf("attach printed no path: %v\n%s", err, stderr())
	}
	path := strings.TrimSpace(strings.SplitN(string(line[:n]), "\n", 2)[0])
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if m, err := io.ReadFull(f, make([]byte, 1<<20)); err != nil {
		t.Fatalf("read %s: %d bytes, %v", path, m, err)
	}
	f.Close()
	stop()
	if !strings.Contains(stderr(), "attached image reference "+plainHost) {
		t.Errorf("attach did not say it read an image reference:\n%s", stderr())
	}
}

func mustRunIn(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := runIn(t, ns, args...); err != nil {
		t.Fatalf("obd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
