package e2e

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

const helloBlobSize = 642560

// countingProxy forwards to a registry and counts the blob bytes it sends back.
type countingProxy struct {
	*httptest.Server
	blobBytes atomic.Int64
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	u, _ := url.Parse(target)
	p := &countingProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if strings.Contains(resp.Request.URL.Path, "/blobs/") && resp.Request.Method == http.MethodGet {
			resp.Body = &countingBody{resp.Body, &p.blobBytes}
		}
		return nil
	}
	p.Server = httptest.NewServer(rp)
	t.Cleanup(p.Close)
	return p
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// attachForeground runs `obd attach --foreground ARGS...` and returns the first line
// it prints and a function that stops it (SIGTERM) and waits.
func attachForeground(t *testing.T, args ...string) (string, func()) {
	t.Helper()
	cmd := exec.Command(bin("obd"), append([]string{"attach", "--foreground"}, args...)...)
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
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
		io.Copy(io.Discard, stdout)
	}()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("attach exited with %v\n%s", err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("attach did not exit within 30 s of SIGTERM")
		}
	}
	select {
	case l, ok := <-lines:
		if !ok {
			cmd.Wait()
			t.Fatalf("attach printed nothing:\n%s", stderr.String())
		}
		return l, stop
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("no device path within 2 min:\n%s", stderr.String())
	}
	return "", nil
}

// TestAttachImageReference attaches the converted hello-world image straight from a
// registry on 127.0.0.1, reads /hello, and checks that the registry sent each blob
// byte at most once and nothing at all to a second attach on the same cache.
func TestAttachImageReference(t *testing.T) {
	needRoot(t)
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	proxy := newCountingProxy(t, reg.URL)
	ref := strings.TrimPrefix(proxy.URL, "http://") + "/hello-world:amd64-converted"
	dir := t.TempDir()
	cacheDir := filepath.Join(dir, "cache")
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	for round := 0; round < 2; round++ {
		before := proxy.blobBytes.Load()
		img, stop := attachForeground(t, "--frontend", "fuse", "--global-config", "/nonexistent", "--cache-dir", cacheDir,
			"--run-dir", filepath.Join(dir, "run"), ref)
		mustRun(t, "mount", "-t", "ext4", "-o", "loop,ro", img, mnt)
		if got := fileSHA(t, filepath.Join(mnt, "hello")); got != helloSHA {
			t.Errorf("round %d: /hello sha256 %s", round, got)
		}
		mustRun(t, "umount", mnt)
		time.Sleep(300 * time.Millisecond)
		stop()
		fetched := proxy.blobBytes.Load() - before
		t.Logf("round %d: %d blob bytes from the registry", round, fetched)
		// Opening a remote blob reads its first byte to surface auth and not-found
		// errors at attach time (as the reference does): 1 byte beyond the data.
		switch {
		case round == 0 && (fetched <= 1 || fetched > helloBlobSize+1):
			t.Errorf("first attach fetched %d blob bytes; want 2..%d (each byte at most once)", fetched, helloBlobSize+1)
		case round == 1 && fetched > 1:
			t.Errorf("second attach on a warm cache fetched %d blob bytes", fetched)
		}
	}
}
