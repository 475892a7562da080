package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const (
	digestA = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	digestB = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

// specImageConfig is the example of docs/overlaybd-format.md §6 with concrete digests.
const specImageConfig = `{
  "repoBlobUrl": "https://registry-1.docker.io/v2/overlaybd/redis/blobs",
  "lowers": [ { "file": "/l/file", "dir": "/l/dir", "digest": "` + digestA + `", "size": 4739584,
                "targetFile": "/l/layer.tar", "targetDigest": "` + digestB + `", "gzipIndex": "/l/gzip.meta" } ],
  "upper": { "index": "/u/index", "data": "/u/data", "target": "/u/target", "gzipIndex": "/u/gz" },
  "resultFile": "/var/lib/x/init-debug.log",
  "download": { "enable": false, "delay": 300, "delayExtra": 30, "maxMBps": 100, "tryCnt": 5, "blockSize": 262144 },
  "accelerationLayer": false,
  "recordTracePath": ""
}`

// specGlobalConfig is the installed example of docs/overlaybd-format.md §7.
const specGlobalConfig = `{ "logConfig": {"logLevel":1,"logPath":"/var/log/overlaybd.log"},
  "cacheConfig": {"cacheType":"file","cacheDir":"/opt/overlaybd/registry_cache","cacheSizeGB":4},
  "gzipCacheConfig": {"enable":true,"cacheDir":"/opt/overlaybd/gzip_cache","cacheSizeGB":4},
  "credentialConfig": {"mode":"file","path":"/opt/overlaybd/cred.json"},
  "ioEngine": 0,
  "download": {"enable":true,"delay":600,"delayExtra":30,"maxMBps":100},
  "p2pConfig": {"enable":false,"address":"localhost:19145/dadip2p"},
  "exporterConfig": {"enable":false,"uriPrefix":"/metrics","port":9863,"updateInterval":60000000},
  "enableAudit": true, "auditPath": "/var/log/overlaybd-audit.log",
  "registryFsVersion": "v2",
  "serviceConfig": {"enable":false,"address":"http://127.0.0.1:9862"} }`

func TestParseImageConfigSpecExample(t *testing.T) {
	c, err := ParseImageConfig([]byte(specImageConfig), "/base")
	if err != nil {
		t.Fatal(err)
	}
	want := &ImageConfig{
		RepoBlobURL: "https://registry-1.docker.io/v2/overlaybd/redis/blobs",
		Lowers: []Layer{{File: "/l/file", Dir: "/l/dir", Digest: digestA, Size: 4739584,
			TargetFile: "/l/layer.tar", TargetDigest: digestB, GzipIndex: "/l/gzip.meta"}},
		Upper:       Upper{Index: "/u/index", Data: "/u/data", Target: "/u/target", GzipIndex: "/u/gz"},
		ResultFile:  "/var/lib/x/init-debug.log",
		Download:    DefaultDownload(),
		HasDownload: true,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	if c.ReadOnly() {
		t.Error("ReadOnly with index and data set")
	}
}

func TestParseImageConfigDefaults(t *testing.T) {
	tests := []struct {
		name string
		json string
		want *ImageConfig
	}{
		{"empty object", `{}`, &ImageConfig{Download: DefaultDownload()}},
		{"nulls are absent", `{"lowers":null,"upper":null,"download":null,"repoBlobUrl":null}`,
			&ImageConfig{Download: DefaultDownload()}},
		{"unknown members ignored with a warning (ACI upper.vsize)",
			`{"lowers":[{"dir":"d","extra":[1,2]}],"upper":{"index":"i","data":"d","vsize":64},"zzz":{}}`,
			&ImageConfig{Lowers: []Layer{{Dir: "/cfg/d"}}, Upper: Upper{Index: "/cfg/i", Data: "/cfg/d"},
				Download: DefaultDownload(), Warnings: []string{`unknown key "lowers[0].extra": ignored`,
					`unknown key "upper.vsize": ignored`, `unknown key "zzz": ignored`}}},
		{"partial download keeps other defaults", `{"download":{"enable":true,"maxMBps":7}}`,
			&ImageConfig{HasDownload: true, Download: Download{Enable: true, Delay: 300, DelayExtra: 30,
				MaxMBps: 7, TryCnt: 5, BlockSize: 262144}}},
		{"duplicate member: first wins like rapidjson", `{"resultFile":"/a","resultFile":"/b"}`,
			&ImageConfig{ResultFile: "/a", Download: DefaultDownload()}},
		{"relative paths resolve against the config dir",
			`{"lowers":[{"file":"x/layer","targetFile":"../t.tar","gzipIndex":"g"}],"resultFile":"init-debug.log",
			  "recordTracePath":"/abs/trace","upper":{"index":"wi","data":"wd","target":"tt","gzipIndex":"gi"}}`,
			&ImageConfig{Lowers: []Layer{{File: "/cfg/x/layer", TargetFile: "/t.tar", GzipIndex: "/cfg/g"}},
				Upper:      Upper{Index: "/cfg/wi", Data: "/cfg/wd", Target: "/cfg/tt", GzipIndex: "/cfg/gi"},
				ResultFile: "/cfg/init-debug.log", RecordTracePath: "/abs/trace", Download: DefaultDownload()}},
		{"acceleration layer", `{"lowers":[{"digest":"` + digestA + `"},{"dir":"/acc"}],"accelerationLayer":true}`,
			&ImageConfig{Lowers: []Layer{{Digest: digestA}, {Dir: "/acc"}}, AccelerationLayer: true,
				Download: DefaultDownload()}},
		{"max uint64 size", `{"lowers":[{"digest":"` + digestA + `","size":18446744073709551615}]}`,
			&ImageConfig{Lowers: []Layer{{Digest: digestA, Size: 1<<64 - 1}}, Download: DefaultDownload()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseImageConfig([]byte(tc.json), "/cfg")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseImageConfigErrors(t *testing.T) {
	tests := []struct{ name, json, want string }{
		{"syntax", `{"lowers": [}`, "invalid JSON: offset 13"},
		{"trailing data", `{} {}`, "invalid JSON"},
		{"root not object", `[1]`, "(root): want a JSON object, found an array"},
		{"bad digest", `{"lowers":[{"digest":"` + digestA + `"},{"dir":"/d"},{"digest":"sha256:abc"}]}`,
			`lowers[2].digest: want sha256:<64 hex>, found "sha256:abc"`},
		{"uppercase digest", `{"lowers":[{"digest":"` + strings.ToUpper(digestA[7:]) + `"}]}`,
			`lowers[0].digest: want sha256:<64 hex>`},
		{"bad target digest", `{"lowers":[{"dir":"/d","targetDigest":"md5:00"}]}`,
			`lowers[0].targetDigest: want sha256:<64 hex>, found "md5:00"`},
		{"accel with trace", `{"lowers":[{"dir":"/d"}],"accelerationLayer":true,"recordTracePath":"/t"}`,
			"accelerationLayer: cannot record a trace (recordTracePath)"},
		{"string type", `{"repoBlobUrl":5}`, "repoBlobUrl: want a string, found number 5"},
		{"bool type", `{"accelerationLayer":"yes"}`, "accelerationLayer: want true or false, found a string"},
		{"size negative", `{"lowers":[{"dir":"/d","size":-1}]}`, "lowers[0].size: want an unsigned integer, found number -1"},
		{"size fraction", `{"lowers":[{"dir":"/d","size":1.5}]}`, "lowers[0].size: want an unsigned integer"},
		{"int32 overflow", `{"download":{"delay":2147483648}}`, "download.delay: want an integer in [-2147483648, 2147483647]"},
		{"uint32 negative", `{"download":{"blockSize":-4096}}`, "download.blockSize: want an integer in [0, 4294967295]"},
		{"zero block size", `{"download":{"blockSize":0}}`, "download.blockSize: must be > 0"},
		{"lowers not array", `{"lowers":{}}`, "lowers: want an array, found an object"},
		{"lower not object", `{"lowers":["a"]}`, "lowers[0]: want a JSON object, found a string"},
		{"empty lower", `{"lowers":[{"dir":"/d"},{}]}`, "lowers[1]: want file, dir or digest, found none"},
		{"upper not object", `{"upper":[]}`, "upper: want a JSON object, found an array"},
		{"upper index type", `{"upper":{"index":1}}`, "upper.index: want a string, found number 1"},
		{"gzip index without target", `{"lowers":[{"dir":"/d","gzipIndex":"/g"}]}`, "lowers[0].gzipIndex: set without targetFile or targetDigest"},
		{"upper target alone", `{"upper":{"target":"/t"}}`, "upper.target: set without upper.index and upper.data"},
		{"bad url", `{"repoBlobUrl":"registry/v2/x/blobs"}`, `repoBlobUrl "registry/v2/x/blobs": want http(s)://`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseImageConfig([]byte(tc.json), "")
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestTooManyLayers(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"lowers":[`)
	for i := 0; i <= MaxLayers; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"dir":"d"}`)
	}
	b.WriteString(`]}`)
	_, err := ParseImageConfig([]byte(b.String()), "")
	if err == nil || !strings.Contains(err.Error(), "lowers: 65537 layers, want at most 65536") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadImageConfigRelativeToFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.v1.json")
	if err := os.WriteFile(path, []byte(`{"lowers":[{"dir":"layer0"}],"resultFile":"init-debug.log"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadImageConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Lowers[0].Dir != filepath.Join(dir, "layer0") || c.ResultFile != filepath.Join(dir, "init-debug.log") {
		t.Fatalf("paths not resolved against %s: %+v", dir, c)
	}
	if !c.ReadOnly() {
		t.Error("no upper but not read-only")
	}
	if err := os.WriteFile(path, []byte(`{"lowers":[{"digest":"sha256:00"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadImageConfig(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "lowers[0].digest") {
		t.Fatalf("error should name file and field: %v", err)
	}
	if _, err := LoadImageConfig(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestParseGlobalConfigSpecExample(t *testing.T) {
	g, err := ParseGlobalConfig([]byte(specGlobalConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultGlobalConfig()
	want.LogConfig.Path = "/var/log/overlaybd.log"
	want.CacheConfig.Type = "file"
	want.GzipCacheConfig.Enable = true
	want.CredentialConfig.Mode, want.CredentialConfig.Path = "file", "/opt/overlaybd/cred.json"
	want.Download = Download{Enable: true, Delay: 600, DelayExtra: 30, MaxMBps: 100, TryCnt: 5, BlockSize: 262144}
	want.HasDownload = true
	want.P2PConfig.Address = "localhost:19145/dadip2p"
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("got  %+v\nwant %+v", g, want)
	}
	if got := g.Log(); got != (LogSettings{Level: 1, Path: "/var/log/overlaybd.log", SizeBytes: 10 << 20, RotateNum: 3}) {
		t.Errorf("Log() = %+v", got)
	}
	if got := g.Cache(); got.Type != "file" || got.Dir != "/opt/overlaybd/registry_cache" || got.SizeGB != 4 || got.RefillSize != 262144 {
		t.Errorf("Cache() = %+v", got)
	}
}

func TestGlobalConfigLegacyFallbacks(t *testing.T) {
	tests := []struct {
		name  string
		json  string
		log   LogSettings
		cache CacheConfig
		cred  CredentialConfig
	}{
		{"defaults", `{}`,
			LogSettings{Level: 1, Path: "/var/log/overlaybd.log", SizeBytes: 10 << 20, RotateNum: 3},
			CacheConfig{Type: "file", Dir: "/opt/overlaybd/registry_cache", SizeGB: 4, RefillSize: 262144, BlockSize: 65536},
			CredentialConfig{Mode: "file", Path: "/opt/overlaybd/cred.json", Timeout: 1}},
		{"legacy top-level members",
			`{"logLevel":3,"logPath":"/old.log","cacheType":"download","registryCacheDir":"/c","registryCacheSizeGB":9,
			  "credentialFilePath":"/cred","logConfig":{"logLevel":0},"cacheConfig":{"cacheDir":"/ignored","refillSize":1048576}}`,
			LogSettings{Level: 3, Path: "/old.log", SizeBytes: 10 << 20, RotateNum: 3},
			CacheConfig{Type: "download", Dir: "/c", SizeGB: 9, RefillSize: 1 << 20, BlockSize: 65536},
			CredentialConfig{Mode: "file", Path: "/cred", Timeout: 1}},
		{"new members win",
			`{"logLevel":3,"logPath":"/old.log","cacheType":"download","registryCacheDir":"/c",
			  "logConfig":{"logLevel":2,"logPath":"/new.log","logSizeMB":5,"logRotateNum":7},
			  "cacheConfig":{"cacheType":"ocf","cacheDir":"/n","cacheSizeGB":1,"blockSize":8192},
			  "credentialConfig":{"mode":"uds","path":"/s.sock","timeout":3}}`,
			LogSettings{Level: 2, Path: "/new.log", SizeBytes: 5 << 20, RotateNum: 7},
			CacheConfig{Type: "ocf", Dir: "/n", SizeGB: 1, RefillSize: 262144, BlockSize: 8192},
			CredentialConfig{Mode: "uds", Path: "/s.sock", Timeout: 3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseGlobalConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if got := g.Log(); got != tc.log {
				t.Errorf("Log() = %+v, want %+v", got, tc.log)
			}
			if got := g.Cache(); got != tc.cache {
				t.Errorf("Cache() = %+v, want %+v", got, tc.cache)
			}
			if got := g.Credentials(); got != tc.cred {
				t.Errorf("Credentials() = %+v, want %+v", got, tc.cred)
			}
		})
	}
}

func TestParseGlobalConfigErrors(t *testing.T) {
	tests := []struct{ name, json, want string }{
		{"cache type", `{"cacheConfig":{"cacheType":"x"}}`, `cacheConfig.cacheType "x": want file|download|ocf`},
		{"legacy cache type", `{"cacheType":"mem"}`, `cacheType "mem": want file|download|ocf`},
		{"refill not power of 2", `{"cacheConfig":{"refillSize":12288}}`, "cacheConfig.refillSize 12288: must be a power of 2 and a multiple of 4096"},
		{"refill too small", `{"cacheConfig":{"refillSize":2048}}`, "cacheConfig.refillSize 2048: must be a power of 2 and a multiple of 4096"},
		{"refill zero", `{"cacheConfig":{"refillSize":0}}`, "cacheConfig.refillSize 0: must be a power of 2"},
		{"gzip refill", `{"gzipCacheConfig":{"enable":true,"refillSize":5000}}`, "gzipCacheConfig.refillSize 5000"},
		{"io engine", `{"ioEngine":3}`, "ioEngine 3: want 0 (psync), 1 (libaio) or 2 (posixaio)"},
		{"thread with file cache", `{"enableThread":true}`, `enableThread: not supported with cacheType "file"`},
		{"registryfs version", `{"registryFsVersion":"V2"}`, `registryFsVersion "V2": want v1|v2`},
		{"credential mode", `{"credentialConfig":{"mode":"ftp"}}`, `credentialConfig.mode "ftp": want file|http|https|uds`},
		{"nested type", `{"exporterConfig":{"port":"80"}}`, "exporterConfig.port: want an integer in"},
		{"section type", `{"p2pConfig":true}`, "p2pConfig: want a JSON object, found a boolean"},
		{"download block", `{"download":{"blockSize":0}}`, "download.blockSize: must be > 0"},
		{"p2p mode", `{"p2pConfig":{"mode":"kraken"}}`, `p2pConfig.mode "kraken": want proxy|dragonfly|peers`},
		{"p2p peers no token", `{"p2pConfig":{"enable":true,"mode":"peers","peers":["a:1"]}}`, "needs token or tokenFile"},
		{"p2p peers none", `{"p2pConfig":{"enable":true,"mode":"peers","token":"t"}}`, "needs peers or peersFile"},
		{"p2p peers type", `{"p2pConfig":{"peers":[1]}}`, "p2pConfig.peers[0]: want a string"},
		{"p2p tls half", `{"p2pConfig":{"mode":"peers","tlsCert":"c"}}`, "tlsCert and tlsKey go together"},
		{"prefetch", `{"prefetchConfig":{"concurrency":0}}`, "prefetchConfig.concurrency 0: must be > 0"},
		{"syntax", `{"a":}`, "invalid JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseGlobalConfig([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// Thread mode is valid with the other cache types.
	if _, err := ParseGlobalConfig([]byte(`{"enableThread":true,"cacheConfig":{"cacheType":"download"}}`)); err != nil {
		t.Fatal(err)
	}
}

func TestLoadGlobalConfig(t *testing.T) {
	dir := t.TempDir()
	g, err := LoadGlobalConfig(filepath.Join(dir, "missing.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, DefaultGlobalConfig()) {
		t.Fatalf("missing file: %+v, want defaults", g)
	}
	path := filepath.Join(dir, "overlaybd.json")
	if err := os.WriteFile(path, []byte(`{"cacheConfig":{"cacheType":"x"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadGlobalConfig(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error should name %s: %v", path, err)
	}
}

func TestInheritDownload(t *testing.T) {
	g, err := ParseGlobalConfig([]byte(`{"download":{"enable":true,"delay":600}}`))
	if err != nil {
		t.Fatal(err)
	}
	inherited := Download{Enable: true, Delay: 600, DelayExtra: 30, MaxMBps: 100, TryCnt: 5, BlockSize: 262144}

	img, _ := ParseImageConfig([]byte(`{}`), "")
	img.InheritDownload(g)
	if img.Download != inherited {
		t.Errorf("absent download: got %+v, want global %+v", img.Download, inherited)
	}

	img, _ = ParseImageConfig([]byte(`{"download":{"maxMBps":1}}`), "")
	img.InheritDownload(g)
	if img.Download.Enable || img.Download.MaxMBps != 1 || img.Download.Delay != 300 {
		t.Errorf("own download must win (with image defaults): %+v", img.Download)
	}

	img, _ = ParseImageConfig([]byte(`{}`), "")
	img.InheritDownload(DefaultGlobalConfig()) // global without "download" member
	if img.Download != DefaultDownload() {
		t.Errorf("global without download: %+v", img.Download)
	}
}

func TestStackLowers(t *testing.T) {
	c, err := ParseImageConfig([]byte(`{"lowers":[{"digest":"`+digestA+`"},{"dir":"acc"}],"accelerationLayer":true}`), "/cfg")
	if err != nil {
		t.Fatal(err)
	}
	lowers, trace := c.StackLowers()
	if len(lowers) != 1 || lowers[0].Digest != digestA || trace != "/cfg/acc/trace" {
		t.Fatalf("StackLowers = %+v, %q", lowers, trace)
	}
	c.AccelerationLayer = false
	if lowers, trace := c.StackLowers(); len(lowers) != 2 || trace != "" {
		t.Fatalf("without acceleration layer: %+v, %q", lowers, trace)
	}
}

func TestBlobURL(t *testing.T) {
	for _, base := range []string{"https://r/v2/a/blobs", "https://r/v2/a/blobs/"} {
		c := &ImageConfig{RepoBlobURL: base}
		got, err := c.BlobURL(digestA)
		if err != nil || got != "https://r/v2/a/blobs/"+digestA {
			t.Errorf("BlobURL(%q) = %q, %v", base, got, err)
		}
	}
	if _, err := (&ImageConfig{}).BlobURL(digestA); err == nil || err.Error() != "empty repoBlobUrl" {
		t.Errorf("empty repoBlobUrl: %v", err)
	}
}

func TestLocalCandidates(t *testing.T) {
	dir := t.TempDir()
	l := Layer{Dir: dir}
	want := []string{dir + "/overlaybd.commit", dir + "/.commit", dir + "/overlaybd.sealed"}
	if got := l.LocalCandidates(); !reflect.DeepEqual(got, want) {
		t.Fatalf("LocalCandidates = %q, want %q", got, want)
	}
	if p, ok := l.FindLocal(); ok {
		t.Fatalf("FindLocal in empty dir = %q", p)
	}
	for i := len(want) - 1; i >= 0; i-- { // each newly created, higher-priority file wins
		if err := os.WriteFile(want[i], nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if p, ok := l.FindLocal(); !ok || p != want[i] {
			t.Fatalf("FindLocal = %q, %v; want %q", p, ok, want[i])
		}
	}
	// An explicit file is the only candidate, even if the dir holds a commit file.
	f := Layer{File: filepath.Join(dir, "blob"), Dir: dir}
	if got := f.LocalCandidates(); !reflect.DeepEqual(got, []string{f.File}) {
		t.Fatalf("with file: %q", got)
	}
	if _, ok := f.FindLocal(); ok {
		t.Fatal("missing explicit file found")
	}
	if got := (Layer{Digest: digestA}).LocalCandidates(); got != nil {
		t.Fatalf("remote-only layer: %q", got)
	}
}

func TestWriteResult(t *testing.T) {
	path := filepath.Join(t.TempDir(), "init-debug.log")
	if err := os.WriteFile(path, []byte("an older, longer content"), 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(want string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Fatalf("result file = %q, %v; want %q", got, err, want)
		}
	}
	if err := WriteResult(path, errors.New("failed to open layer 2")); err != nil {
		t.Fatal(err)
	}
	check("failed:failed to open layer 2")
	if err := WriteResult(path, nil); err != nil {
		t.Fatal(err)
	}
	check("success")
	if err := WriteResult("", errors.New("x")); err != nil {
		t.Fatalf("empty resultFile: %v", err)
	}
	if err := WriteResult(filepath.Join(path, "sub"), nil); err == nil {
		t.Fatal("unwritable result file: no error")
	}
}

func TestParseGlobalConfigP2P(t *testing.T) {
	g, err := ParseGlobalConfig([]byte(`{"p2pConfig":{"enable":true,"mode":"peers","address":"ignored",
		"peers":["10.0.0.1:19150","https://10.0.0.2:19150"],"peersFile":"/etc/obd/peers","token":"s3cret",
		"listen":":19150","advertise":"10.0.0.1:19150","fanOut":4,"tlsCert":"c.pem","tlsKey":"k.pem","tlsCA":"ca.pem"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := P2PConfig{Enable: true, Mode: P2PModePeers, Address: "ignored",
		Peers: []string{"10.0.0.1:19150", "https://10.0.0.2:19150"}, PeersFile: "/etc/obd/peers", Token: "s3cret",
		Listen: ":19150", Advertise: "10.0.0.1:19150", FanOut: 4, TLSCert: "c.pem", TLSKey: "k.pem", TLSCA: "ca.pem"}
	if !reflect.DeepEqual(g.P2PConfig, want) {
		t.Fatalf("p2pConfig\n got %+v\nwant %+v", g.P2PConfig, want)
	}
}

func TestDownloadDirBytes(t *testing.T) {
	for _, tc := range []struct {
		json string
		want int64
	}{
		{`{}`, 4 << 30}, // the cache's default size
		{`{"cacheConfig":{"cacheType":"file","cacheSizeGB":10}}`, 10 << 30},
		{`{"cacheConfig":{"cacheType":"file","cacheSizeGB":10},"downloadDirSizeGB":50}`, 50 << 30},
	} {
		g, err := ParseGlobalConfig([]byte(tc.json))
		if err != nil {
			t.Fatal(tc.json, err)
		}
		if got := g.DownloadDirBytes(); got != tc.want {
			t.Errorf("%s: DownloadDirBytes %d, want %d", tc.json, got, tc.want)
		}
	}
	if _, err := ParseGlobalConfig([]byte(`{"downloadDirSizeGB":-1}`)); err == nil {
		t.Error("negative downloadDirSizeGB accepted")
	}
}

func TestUnknownKeysSuggestNearest(t *testing.T) {
	c, err := ParseImageConfig([]byte(`{"repoBlobURL":"x","lowers":[{"digest":"`+digestA+`","sise":3}],
		"upper":{"index":"i","data":"d"},"downlaod":{"enable":true},"download":{"delai":1},"resultfile":"r"}`), "/cfg")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`unknown key "repoBlobURL" (did you mean "repoBlobUrl"?): ignored`,
		`unknown key "lowers[0].sise" (did you mean "lowers[0].size"?): ignored`,
		`unknown key "downlaod" (did you mean "download"?): ignored`,
		`unknown key "download.delai" (did you mean "download.delay"?): ignored`,
		`unknown key "resultfile" (did you mean "resultFile"?): ignored`,
	}
	if !reflect.DeepEqual(c.Warnings, want) {
		t.Fatalf("warnings\n got %q\nwant %q", c.Warnings, want)
	}
	g, err := ParseGlobalConfig([]byte(`{"cacheConfig":{"cacheDir":"/c","cacheSizeGb":2},"p2pconfig":{},
		"insecureRegistries":["10.0.0.1:5000"],"mirrorRegistry":[{"host":"docker.io","mirrors":["m:5000"],"insecur":true}],
		"certConfig":{"caFile":"/ca.pem"},"zzzzzzzzzz":1}`))
	if err != nil {
		t.Fatal(err)
	}
	want = []string{
		`unknown key "cacheConfig.cacheSizeGb" (did you mean "cacheConfig.cacheSizeGB"?): ignored`,
		`unknown key "p2pconfig" (did you mean "p2pConfig"?): ignored`,
		`unknown key "mirrorRegistry[0].insecur" (did you mean "mirrorRegistry[0].insecure"?): ignored`,
		`unknown key "zzzzzzzzzz": ignored`,
	}
	if !reflect.DeepEqual(g.Warnings, want) {
		t.Fatalf("warnings\n got %q\nwant %q", g.Warnings, want)
	}
	// The reference's own example and every key obd documents draw no warning.
	g, err = ParseGlobalConfig([]byte(`{"logConfig":{"logLevel":1,"logPath":"/l","logSizeMB":1,"logRotateNum":1},
		"cacheConfig":{"cacheType":"file","cacheDir":"/c","cacheSizeGB":4,"refillSize":262144,"blockSize":65536},
		"gzipCacheConfig":{"enable":true,"cacheDir":"/g","cacheSizeGB":4,"refillSize":1048576},
		"credentialConfig":{"mode":"file","path":"/p","timeout":1},"ioEngine":0,
		"download":{"enable":true,"delay":600,"delayExtra":30,"maxMBps":100,"tryCnt":5,"blockSize":262144},
		"p2pConfig":{"enable":false,"address":"localhost:19145/dadip2p"},
		"exporterConfig":{"enable":false,"uriPrefix":"/metrics","port":9863,"updateInterval":60000000},
		"enableAudit":true,"auditPath":"/a","registryFsVersion":"v2","userAgent":"u","prefetchConfig":{"concurrency":4},
		"certConfig":{"certFile":"","keyFile":""},"serviceConfig":{"enable":false,"address":"http://127.0.0.1:9862"}}`))
	if err != nil || g.Warnings != nil {
		t.Fatalf("reference example: err %v, warnings %q", err, g.Warnings)
	}
	if got := g.Insecure(); got != nil {
		t.Fatalf("Insecure() = %q", got)
	}
}

func TestRegistriesConfig(t *testing.T) {
	g, err := ParseGlobalConfig([]byte(`{"insecureRegistries":["10.0.0.1:5000"],
		"mirrorRegistry":[{"host":"docker.io","mirrors":["m1:5000","m2"]},{"host":"reg.lan","insecure":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.Insecure(), []string{"10.0.0.1:5000", "reg.lan"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Insecure() = %q, want %q", got, want)
	}
	if got, want := g.Mirrors(), map[string][]string{"docker.io": {"m1:5000", "m2"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Mirrors() = %q, want %q", got, want)
	}
	for _, bad := range []struct{ json, want string }{
		{`{"insecureRegistries":"h"}`, "insecureRegistries: want an array"},
		{`{"insecureRegistries":[1]}`, "insecureRegistries[0]: want a string"},
		{`{"mirrorRegistry":[{"insecure":true}]}`, "mirrorRegistry[0].host: missing"},
		{`{"insecureRegistries":["http://h:5000"]}`, `insecureRegistries[0] "http://h:5000": want HOST or HOST:PORT`},
		{`{"mirrorRegistry":[{"host":"h","mirrors":["https://m/v2"]}]}`, `mirrorRegistry[0].mirrors[0] "https://m/v2"`},
		{`{"mirrorRegistry":[{"host":"h","mirrors":[true]}]}`, "mirrorRegistry[0].mirrors[0]: want a string"},
	} {
		if _, err := ParseGlobalConfig([]byte(bad.json)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err %v, want %q", bad.json, err, bad.want)
		}
	}
}

// An upper that is only half there must not make the device silently read-only.
func TestIncompleteUpperIsAnError(t *testing.T) {
	_, err := ParseImageConfig([]byte(`{"lowers":[{"dir":"/l"}],"upper":{"index":"/i"}}`), "")
	if err == nil || !strings.Contains(err.Error(), "upper.index: set without upper.data") {
		t.Fatalf("index without data: err %v", err)
	}
	// Data alone is a writable upper (a sparse one; image.OpenWritable refuses
	// a non-sparse data file without its index).
	c, err := ParseImageConfig([]byte(`{"lowers":[{"dir":"/l"}],"upper":{"data":"/d"}}`), "")
	if err != nil || c.ReadOnly() {
		t.Fatalf("data only: err %v, read-only %v", err, c != nil && c.ReadOnly())
	}
}
