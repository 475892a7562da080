package e2e

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// `obd pull` fetches the image whole; an attach by reference then works with the
// registry down (the reference resolves from the pull's record, every blob read
// is local).
func TestPullThenAttachRegistryDown(t *testing.T) {
	needRoot(t)
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/hello-world:amd64-converted"
	dir := t.TempDir()
	cacheDir := filepath.Join(dir, "cache")
	out := mustRun(t, bin("obd"), "--log-level", "warn", "pull", "--global-config", "/nonexistent", "--cache-dir", cacheDir, "--json", ref)
	var res struct {
		Layers         int
		Bytes, Fetched int64
	}
	if err := json.Unmarshal([]byte(firstLine(out)), &res); err != nil {
		t.Fatalf("pull output %q: %v", out, err)
	}
	if res.Layers < 1 || res.Fetched != res.Bytes || proxy.BlobBytes() < res.Bytes {
		t.Fatalf("pull %+v, registry sent %d blob bytes", res, proxy.BlobBytes())
	}
	proxy.Close() // the registry is down
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	a := startFG(t, "--frontend", "fuse", "--global-config", "/nonexistent", "--cache-dir", cacheDir, "--run-dir", filepath.Join(dir, "run"), ref)
	mountHello(t, a.path, mnt)
	a.stop(t)
}

// `obd attach --record-trace` records a start-up (mount, read /hello); a later
// attach on a cold cache with `--prefetch` replays it, after which the same
// start-up makes no registry request.
func TestRuntimeTraceRecordReplay(t *testing.T) {
	needRoot(t)
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/hello-world:amd64-converted"
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	tr := filepath.Join(dir, "startup.trace")
	common := []string{"--frontend", "fuse", "--global-config", "/nonexistent", "--run-dir", filepath.Join(dir, "run")}

	a := startFG(t, append(common, "--cache-dir", filepath.Join(dir, "cache1"), "--record-trace", tr, ref)...)
	mountHello(t, a.path, mnt)
	a.stop(t)
	if st, err := os.Stat(tr); err != nil || st.Size() <= 24 {
		t.Fatalf("no trace recorded: %v\n%s", err, a.log())
	}
	if _, err := os.Stat(tr + ".ok"); err != nil {
		t.Errorf("no .ok after recording: %v", err)
	}

	recorded := proxy.BlobBytes()
	a = startFG(t, append(common, "--cache-dir", filepath.Join(dir, "cache2"), "--prefetch", tr, ref)...)
	a.waitLog(t, "trace replayed")
	before := proxy.BlobBytes()
	t.Logf("recording attach fetched %d blob bytes, replay %d", recorded, before-recorded)
	if before-recorded < 4096 {
		t.Errorf("replay on a cold cache fetched %d bytes: nothing was prefetched", before-recorded)
	}
	mountHello(t, a.path, mnt)
	if n := proxy.BlobBytes() - before; n != 0 {
		t.Errorf("after replay, the recorded start-up fetched %d blob bytes; want 0", n)
	}
	a.stop(t)
}

// `obd stats` reads the daemon's metrics over its socket: after attaching an image
// by reference and reading it, the registry bytes it reports are those the
// registry sent, and the device's read bytes are those read.
func TestStatsAfterRemoteAttach(t *testing.T) {
	needRoot(t)
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/hello-world:amd64-converted"
	dir := t.TempDir()
	d := startDaemon(t, dir, "--cache-dir", filepath.Join(dir, "cache"))
	defer d.stop(t)
	out, err := d.obd(t, "attach", "--frontend", "fuse", ref)
	if err != nil {
		t.Fatal(err, out)
	}
	f, err := os.Open(firstLine(out))
	if err != nil {
		t.Fatal(err)
	}
	const n = 2 << 20
	if _, err := io.CopyN(io.Discard, f, n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err = d.obd(t, "stats", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	var rows []struct {
		Name   string
		Labels map[string]string
		Value  float64
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("stats --json: %v\n%s", err, out)
	}
	get := func(name, k, v string) (float64, bool) {
		for _, r := range rows {
			if r.Name == name && (k == "" || r.Labels[k] == v) {
				return r.Value, true
			}
		}
		return 0, false
	}
	if v, ok := get("obd_fetched_bytes_total", "source", "registry"); !ok || int64(v) != proxy.BlobBytes() {
		t.Errorf("stats: registry bytes %v (%v); the registry sent %d", v, ok, proxy.BlobBytes())
	}
	if v, ok := get("obd_device_read_bytes_total", "", ""); !ok || v < n {
		t.Errorf("stats: device read bytes %v; read %d", v, n)
	}
	if v, ok := get("obd_cache_misses_total", "", ""); !ok || v == 0 {
		t.Errorf("stats: cache misses %v (%v)", v, ok)
	}
	table, err := d.obd(t, "stats")
	if err != nil || !strings.Contains(table, "obd_registry_requests_total") {
		t.Errorf("stats table: %v\n%s", err, table)
	}
}

// With download.enable in the daemon's config, an image attached by reference is
// downloaded whole in the background: `obd list` reports it done, the verified
// copy sits in the layer directory, and the device reads right with the registry
// down.
func TestBackgroundDownloadDaemon(t *testing.T) {
	needRoot(t)
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	proxy := registrytest.NewCountingProxy(t, reg.URL)
	ref := proxy.Host() + "/hello-world:amd64-converted"
	dir := t.TempDir()
	global := filepath.Join(dir, "overlaybd.json")
	os.WriteFile(global, []byte(`{"download": {"enable": true, "delay": 0, "delayExtra": 1, "maxMBps": 10, "tryCnt": 2}}`), 0o644)
	// startDaemon passes a nonexistent --config first; the later one wins.
	d := startDaemon(t, dir, "--cache-dir", filepath.Join(dir, "cache"), "--config", global)
	defer d.stop(t)
	out, err := d.obd(t, "attach", "--frontend", "fuse", ref)
	if err != nil {
		t.Fatal(err, out)
	}
	img := firstLine(out)
	var st []struct {
		Downloads []struct {
			Digest string
			State  string
			Bytes  int64
			Size   int64
		}
	}
	for i := 0; ; i++ {
		out, err := d.obd(t, "list", "--json")
		if err != nil {
			t.Fatal(err, out)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 || len(st[0].Downloads) != 1 {
			t.Fatalf("list --json: %v\n%s", err, out)
		}
		if st[0].Downloads[0].State == "done" {
			break
		}
		if i == 300 {
			t.Fatalf("download not done within 30 s: %+v\n%s", st[0].Downloads, d.logText())
		}
		time.Sleep(100 * time.Millisecond)
	}
	dl := st[0].Downloads[0]
	if dl.Bytes != helloBlobSize || dl.Size != helloBlobSize {
		t.Errorf("download %+v; want %d bytes", dl, helloBlobSize)
	}
	local := filepath.Join(d.stateDir, "layers", strings.TrimPrefix(dl.Digest, "sha256:"), "overlaybd.commit")
	if got := fileSHA(t, local); "sha256:"+got != dl.Digest {
		t.Errorf("local copy %s hashes to %s", local, got)
	}
	table, _ := d.obd(t, "list")
	if !strings.Contains(table, "1/1 100%") {
		t.Errorf("obd list does not show the finished download:\n%s", table)
	}
	proxy.Close() // the registry is down
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mountHello(t, img, mnt)
}

// Through a token-protected registry that redirects blob reads to signed storage
// URLs (registry/'s tests add faults and retries), the daemon's debug log and the
// output of list and stats never carry the password, the Basic credentials, a
// bearer token or a URL signature.
func TestLogsCarryNoSecrets(t *testing.T) {
	needRoot(t)
	const user, pass = "alice", "s3cr3t-pa55w0rd"
	reg := registrytest.New(t, registrytest.WithTokenAuth(user, pass, 0), registrytest.WithRedirect(time.Minute))
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	dir := t.TempDir()
	creds := filepath.Join(dir, "cred.json")
	os.WriteFile(creds, []byte(`{"auths": {"`+reg.Host+`": {"username": "`+user+`", "password": "`+pass+`"}}}`), 0o600)
	global := filepath.Join(dir, "overlaybd.json")
	os.WriteFile(global, []byte(`{"credentialConfig": {"mode": "file", "path": "`+creds+`"}}`), 0o644)
	d := startDaemon(t, dir, "--cache-dir", filepath.Join(dir, "cache"), "--config", global)
	out, err := d.obd(t, "attach", "--frontend", "fuse", reg.Host+"/hello-world:amd64-converted")
	if err != nil {
		d.stop(t)
		t.Fatal(err, out, d.logText())
	}
	f, err := os.Open(firstLine(out))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, io.LimitReader(f, 4<<20))
	f.Close()
	list, _ := d.obd(t, "list", "--json")
	stats, _ := d.obd(t, "stats", "--all")
	d.stop(t)
	logs := d.logText()
	if reg.StorageGets() == 0 {
		t.Fatal("no blob read went to signed storage: the test checks nothing")
	}
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	for name, text := range map[string]string{"daemon log": logs, "list": list, "stats": stats} {
		for _, secret := range []string{pass, basic, "sig=", "Bearer ", "token="} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains %q", name, secret)
			}
		}
	}
	if !strings.Contains(logs, "debug") {
		t.Errorf("the daemon log has no debug lines: the test would not see URLs logged at debug")
	}
}
