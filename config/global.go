package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// DefaultGlobalConfigPath is where overlaybd-tcmu looks without an argument.
const DefaultGlobalConfigPath = "/etc/overlaybd/overlaybd.json"

// DefaultUserAgent is the reference build's default OVERLAYBD_VERSION.
const DefaultUserAgent = "overlaybd/0.0.0-undefined"

// LogConfig is "logConfig". When Path is empty the legacy top-level logLevel/logPath
// apply instead (see GlobalConfig.Log).
type LogConfig struct {
	// Level is 0 DEBUG, 1 INFO, 2 WARN, 3 ERROR (default 1).
	Level uint32
	// Path is the log file; empty selects the legacy top-level settings.
	Path string
	// SizeMB is the rotation size in MiB (default 10).
	SizeMB uint32
	// RotateNum is the number of rotated files kept (default 3).
	RotateNum int
}

// CacheConfig is "cacheConfig", the registry blob cache. An empty Type selects the
// legacy top-level cacheType/registryCacheDir/registryCacheSizeGB (see GlobalConfig.Cache).
type CacheConfig struct {
	// Type is "file", "download" or "ocf"; "" = legacy top-level settings.
	Type string
	// Dir is the cache directory (default /opt/overlaybd/registry_cache).
	Dir string
	// SizeGB is the capacity in GiB (default 4).
	SizeGB uint32
	// RefillSize is the refill unit in bytes, a power of 2 and a multiple of 4096
	// (default 262144). It applies with or without the legacy fallback.
	RefillSize uint32
	// BlockSize is the OCF cache block size (default 65536).
	BlockSize uint32
}

// GzipCacheConfig is "gzipCacheConfig", the cache of decompressed TurboOCI targets.
type GzipCacheConfig struct {
	// Enable turns the gzip cache on (default false).
	Enable bool
	// Dir is the cache directory (default /opt/overlaybd/gzip_cache).
	Dir string
	// SizeGB is the capacity in GiB (default 4).
	SizeGB uint32
	// RefillSize is the refill unit in bytes (default 1 MiB, the code's value).
	RefillSize uint32
}

// CredentialConfig is "credentialConfig". An empty Mode selects the legacy
// credentialFilePath in file mode (see GlobalConfig.Credentials).
type CredentialConfig struct {
	// Mode is "file", "http", "https" or "uds"; "" = legacy credentialFilePath.
	Mode string
	// Path is the file path, URL or socket path; empty with a Mode means no credentials.
	Path string
	// Timeout is the http/https/uds request timeout in seconds (default 1).
	Timeout int
	// ClientCertPath, ClientKeyPath and ServerCAPath configure mTLS in https mode.
	ClientCertPath, ClientKeyPath, ServerCAPath string
}

// P2PConfig is "p2pConfig". enable and address are the reference's; the other
// members are obd's (the reference ignores them).
type P2PConfig struct {
	// Enable routes blob data through the P2P proxy when it is reachable.
	Enable bool
	// Address is the proxy prefix (default "http://localhost:9731/accelerator");
	// in dragonfly mode, dfdaemon's proxy address ("" → 127.0.0.1:4001).
	Address string
	// Mode is "proxy" (the reference's URL prefix; the default), "dragonfly"
	// (dfdaemon as an HTTP proxy) or "peers" (obd's built-in peer mode).
	Mode string
	// Peers lists peers ("host:port" or http(s)://host:port); PeersFile names a
	// file of them, one a line, re-read when it changes. Peer mode only.
	Peers     []string
	PeersFile string
	// Token is the fleet's shared secret (or TokenFile, a file holding it).
	Token, TokenFile string
	// Listen is where this node's peer server listens (default ":19150");
	// Advertise is how peers reach it (must match its entry in the peer list).
	Listen, Advertise string
	// FanOut is the width of each chunk's distribution tree (0: 8).
	FanOut int
	// TLSCert and TLSKey serve the peer server over TLS; TLSCA verifies https:// peers
	// (and, in dragonfly mode, dfdaemon's interception certificate).
	TLSCert, TLSKey, TLSCA string
	// AllowInsecureProxy (obd's "allowInsecureProxy") accepts an http:// proxy
	// address that is not loopback in proxy mode: the registry's Authorization
	// header then crosses the network in clear text.
	AllowInsecureProxy bool
}

// P2P modes.
const (
	P2PModeProxy     = "proxy"
	P2PModeDragonfly = "dragonfly"
	P2PModePeers     = "peers"
)

// ExporterConfig is "exporterConfig", the Prometheus exporter.
type ExporterConfig struct {
	// Enable starts the exporter.
	Enable bool
	// URIPrefix is the metrics path (default "/metrics").
	URIPrefix string
	// Port is the listening port (default 9863).
	Port int
	// UpdateInterval is in microseconds (default 60e6).
	UpdateInterval uint64
}

// ServiceConfig is "serviceConfig", the live-snapshot HTTP API.
type ServiceConfig struct {
	// Enable starts the API server.
	Enable bool
	// Address is where it listens (default "http://127.0.0.1:9862").
	Address string
}

// CertConfig is "certConfig": client TLS certificate for the registry, and (obd's
// caFile) a PEM bundle of CAs trusted in addition to the system roots.
type CertConfig struct {
	CertFile, KeyFile string
	CAFile            string
}

// MirrorRegistry is one entry of obd's "mirrorRegistry" (the snapshotter's
// convention, {host, insecure}, plus mirrors).
type MirrorRegistry struct {
	// Host is the registry, "host" or "host:port", as image references name it.
	Host string
	// Insecure allows plain HTTP and unverified TLS for Host, like an
	// insecureRegistries entry.
	Insecure bool
	// Mirrors are hosts ("host[:port]") tried in order before Host for
	// manifests and blobs; the origin is the fallback.
	Mirrors []string
}

// GlobalConfig is a parsed overlaybd.json.
type GlobalConfig struct {
	// RegistryFsVersion is "v1" (libcurl) or "v2" (default).
	RegistryFsVersion string
	// LogConfig is "logConfig"; LegacyLogLevel/LegacyLogPath are the old top-level members.
	LogConfig      LogConfig
	LegacyLogLevel uint32 // top-level logLevel (default 1)
	LegacyLogPath  string // top-level logPath (default /var/log/overlaybd.log)
	// CacheConfig is "cacheConfig"; the Legacy* fields are the old top-level members.
	CacheConfig        CacheConfig
	LegacyCacheType    string // top-level cacheType (default "file")
	LegacyCacheDir     string // top-level registryCacheDir
	LegacyCacheSizeGB  uint32 // top-level registryCacheSizeGB (default 4)
	GzipCacheConfig    GzipCacheConfig
	CredentialConfig   CredentialConfig
	CredentialFilePath string // legacy, used when CredentialConfig.Mode is empty
	IOEngine           uint32 // local RO files: 0 psync, 1 libaio, 2 posixaio
	Download           Download
	HasDownload        bool // the file had a "download" object (see ImageConfig.InheritDownload)
	// DownloadDirSizeGB (obd's, top-level downloadDirSizeGB) bounds the layer
	// directories the daemon creates for background downloads of images attached
	// by reference; 0: the cache's size (see DownloadDirBytes).
	DownloadDirSizeGB   uint32
	P2PConfig           P2PConfig
	ExporterConfig      ExporterConfig
	EnableAudit         bool   // default true
	AuditPath           string // default /var/log/overlaybd-audit.log
	EnableThread        bool   // one OS thread per device; invalid with the file cache
	PrefetchConcurrency int    // prefetchConfig.concurrency, trace replay workers (default 16)
	CertConfig          CertConfig
	UserAgent           string // HTTP User-Agent (default DefaultUserAgent)
	ServiceConfig       ServiceConfig
	// InsecureRegistries (obd's "insecureRegistries") lists registries,
	// "host[:port]", reached over plain HTTP or with unverified TLS.
	InsecureRegistries []string
	// MirrorRegistry is obd's "mirrorRegistry": per-registry insecure and mirrors.
	MirrorRegistry []MirrorRegistry
	// Warnings are the file's unknown keys (with the nearest known one), to log;
	// the reference silently ignores them.
	Warnings []string
}

// DefaultGlobalConfig returns the reference's defaults (an empty overlaybd.json).
func DefaultGlobalConfig() *GlobalConfig {
	return &GlobalConfig{
		RegistryFsVersion: "v2",
		LogConfig:         LogConfig{Level: 1, SizeMB: 10, RotateNum: 3},
		LegacyLogLevel:    1,
		LegacyLogPath:     "/var/log/overlaybd.log",
		CacheConfig: CacheConfig{
			Dir: "/opt/overlaybd/registry_cache", SizeGB: 4, RefillSize: 262144, BlockSize: 65536,
		},
		LegacyCacheType:     "file",
		LegacyCacheDir:      "/opt/overlaybd/registry_cache",
		LegacyCacheSizeGB:   4,
		GzipCacheConfig:     GzipCacheConfig{Dir: "/opt/overlaybd/gzip_cache", SizeGB: 4, RefillSize: 1 << 20},
		CredentialConfig:    CredentialConfig{Timeout: 1},
		CredentialFilePath:  "/opt/overlaybd/cred.json",
		Download:            DefaultDownload(),
		P2PConfig:           P2PConfig{Address: "http://localhost:9731/accelerator"},
		ExporterConfig:      ExporterConfig{URIPrefix: "/metrics", Port: 9863, UpdateInterval: 60_000_000},
		EnableAudit:         true,
		AuditPath:           "/var/log/overlaybd-audit.log",
		PrefetchConcurrency: 16,
		UserAgent:           DefaultUserAgent,
		ServiceConfig:       ServiceConfig{Address: "http://127.0.0.1:9862"},
	}
}

// LoadGlobalConfig reads overlaybd.json at path (DefaultGlobalConfigPath if empty).
// A missing file yields the defaults.
func LoadGlobalConfig(path string) (*GlobalConfig, error) {
	if path == "" {
		path = DefaultGlobalConfigPath
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return DefaultGlobalConfig(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	g, err := ParseGlobalConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return g, nil
}

// ParseGlobalConfig parses overlaybd.json content and checks what the daemon's init
// rejects (ioEngine, cache type, refill size, enableThread with the file cache).
func ParseGlobalConfig(data []byte) (*GlobalConfig, error) {
	if !json.Valid(data) {
		return nil, fmt.Errorf("invalid JSON: %w", jsonSyntaxError(data))
	}
	root, err := parseObject(data, "")
	if err != nil {
		return nil, err
	}
	g := DefaultGlobalConfig()
	if err := firstErr(
		root.str("registryFsVersion", &g.RegistryFsVersion),
		root.uint32("logLevel", &g.LegacyLogLevel),
		root.str("logPath", &g.LegacyLogPath),
		root.str("cacheType", &g.LegacyCacheType),
		root.str("registryCacheDir", &g.LegacyCacheDir),
		root.uint32("registryCacheSizeGB", &g.LegacyCacheSizeGB),
		root.str("credentialFilePath", &g.CredentialFilePath),
		root.uint32("ioEngine", &g.IOEngine),
		root.boolean("enableAudit", &g.EnableAudit),
		root.str("auditPath", &g.AuditPath),
		root.boolean("enableThread", &g.EnableThread),
		root.str("userAgent", &g.UserAgent),
		root.uint32("downloadDirSizeGB", &g.DownloadDirSizeGB),
	); err != nil {
		return nil, err
	}
	// Each nested object: parse its members into the defaults already in g.
	sections := []struct {
		name  string
		parse func(*object) error
	}{
		{"logConfig", func(o *object) error {
			c := &g.LogConfig
			return firstErr(o.uint32("logLevel", &c.Level), o.str("logPath", &c.Path),
				o.uint32("logSizeMB", &c.SizeMB), o.int32("logRotateNum", &c.RotateNum))
		}},
		{"cacheConfig", func(o *object) error {
			c := &g.CacheConfig
			return firstErr(o.str("cacheType", &c.Type), o.str("cacheDir", &c.Dir),
				o.uint32("cacheSizeGB", &c.SizeGB), o.uint32("refillSize", &c.RefillSize),
				o.uint32("blockSize", &c.BlockSize))
		}},
		{"gzipCacheConfig", func(o *object) error {
			c := &g.GzipCacheConfig
			return firstErr(o.boolean("enable", &c.Enable), o.str("cacheDir", &c.Dir),
				o.uint32("cacheSizeGB", &c.SizeGB), o.uint32("refillSize", &c.RefillSize))
		}},
		{"credentialConfig", func(o *object) error {
			c := &g.CredentialConfig
			return firstErr(o.str("mode", &c.Mode), o.str("path", &c.Path), o.int32("timeout", &c.Timeout),
				o.str("client_cert_path", &c.ClientCertPath), o.str("client_key_path", &c.ClientKeyPath),
				o.str("server_ca_path", &c.ServerCAPath))
		}},
		{"download", func(o *object) error {
			g.HasDownload = true
			return parseDownload(o, &g.Download)
		}},
		{"p2pConfig", func(o *object) error {
			c := &g.P2PConfig
			peers, err := o.array("peers")
			if err != nil {
				return err
			}
			for i, v := range peers {
				var p string
				if err := json.Unmarshal(v, &p); err != nil {
					return fmt.Errorf("p2pConfig.peers[%d]: want a string, found %s", i, kind(v))
				}
				c.Peers = append(c.Peers, p)
			}
			return firstErr(o.boolean("enable", &c.Enable), o.str("address", &c.Address), o.str("mode", &c.Mode),
				o.str("peersFile", &c.PeersFile), o.str("token", &c.Token), o.str("tokenFile", &c.TokenFile),
				o.str("listen", &c.Listen), o.str("advertise", &c.Advertise), o.int32("fanOut", &c.FanOut),
				o.str("tlsCert", &c.TLSCert), o.str("tlsKey", &c.TLSKey), o.str("tlsCA", &c.TLSCA),
				o.boolean("allowInsecureProxy", &c.AllowInsecureProxy))
		}},
		{"exporterConfig", func(o *object) error {
			c := &g.ExporterConfig
			return firstErr(o.boolean("enable", &c.Enable), o.str("uriPrefix", &c.URIPrefix),
				o.int32("port", &c.Port), o.uint64("updateInterval", &c.UpdateInterval))
		}},
		{"prefetchConfig", func(o *object) error { return o.int32("concurrency", &g.PrefetchConcurrency) }},
		{"certConfig", func(o *object) error {
			return firstErr(o.str("certFile", &g.CertConfig.CertFile), o.str("keyFile", &g.CertConfig.KeyFile),
				o.str("caFile", &g.CertConfig.CAFile))
		}},
		{"serviceConfig", func(o *object) error {
			return firstErr(o.boolean("enable", &g.ServiceConfig.Enable), o.str("address", &g.ServiceConfig.Address))
		}},
	}
	if err := parseRegistries(root, g); err != nil {
		return nil, err
	}
	for _, s := range sections {
		o, err := root.child(s.name)
		if err != nil {
			return nil, err
		}
		if o != nil {
			if err := s.parse(o); err != nil {
				return nil, err
			}
		}
	}
	if err := g.validate(); err != nil {
		return nil, err
	}
	g.Warnings = unknownKeys(data, globalKeys)
	return g, nil
}

// parseRegistries reads insecureRegistries and mirrorRegistry.
func parseRegistries(root *object, g *GlobalConfig) error {
	var err error
	if g.InsecureRegistries, err = root.strings("insecureRegistries"); err != nil {
		return err
	}
	for i, h := range g.InsecureRegistries {
		if err := CheckRegistryHost(fmt.Sprintf("insecureRegistries[%d]", i), h); err != nil {
			return err
		}
	}
	entries, err := root.array("mirrorRegistry")
	if err != nil {
		return err
	}
	for i, raw := range entries {
		o, err := parseObject(raw, fmt.Sprintf("mirrorRegistry[%d]", i))
		if err != nil {
			return err
		}
		var m MirrorRegistry
		if err := firstErr(o.str("host", &m.Host), o.boolean("insecure", &m.Insecure)); err != nil {
			return err
		}
		if m.Mirrors, err = o.strings("mirrors"); err != nil {
			return err
		}
		if m.Host == "" {
			return fmt.Errorf("mirrorRegistry[%d].host: missing", i)
		}
		if err := CheckRegistryHost(fmt.Sprintf("mirrorRegistry[%d].host", i), m.Host); err != nil {
			return err
		}
		for j, h := range m.Mirrors {
			if err := CheckRegistryHost(fmt.Sprintf("mirrorRegistry[%d].mirrors[%d]", i, j), h); err != nil {
				return err
			}
		}
		g.MirrorRegistry = append(g.MirrorRegistry, m)
	}
	return nil
}

// CheckRegistryHost accepts "host" or "host:port" (as image references name a
// registry), not a URL.
func CheckRegistryHost(field, h string) error {
	if h == "" || strings.Contains(h, "/") || strings.ContainsAny(h, " \t@?#") {
		return fmt.Errorf("%s %q: want HOST or HOST:PORT (no scheme or path)", field, h)
	}
	return nil
}

// Insecure lists every registry allowed plain HTTP and unverified TLS:
// insecureRegistries and the insecure mirrorRegistry entries.
func (g *GlobalConfig) Insecure() []string {
	out := append([]string(nil), g.InsecureRegistries...)
	for _, m := range g.MirrorRegistry {
		if m.Insecure {
			out = append(out, m.Host)
		}
	}
	return out
}

// Mirrors maps each registry host to its mirrors (mirrorRegistry[].mirrors).
func (g *GlobalConfig) Mirrors() map[string][]string {
	out := map[string][]string{}
	for _, m := range g.MirrorRegistry {
		if len(m.Mirrors) > 0 {
			out[m.Host] = append(out[m.Host], m.Mirrors...)
		}
	}
	return out
}

func (g *GlobalConfig) validate() error {
	if g.IOEngine > 2 {
		return fmt.Errorf("ioEngine %d: want 0 (psync), 1 (libaio) or 2 (posixaio)", g.IOEngine)
	}
	// The reference treats anything but "v2" as v1; a typo silently switching HTTP
	// clients is worse than an error.
	if g.RegistryFsVersion != "v1" && g.RegistryFsVersion != "v2" {
		return fmt.Errorf("registryFsVersion %q: want v1|v2", g.RegistryFsVersion)
	}
	field := "cacheConfig.cacheType"
	if g.CacheConfig.Type == "" {
		field = "cacheType"
	}
	c := g.Cache()
	switch c.Type {
	case "file", "download", "ocf":
	default:
		return fmt.Errorf("%s %q: want file|download|ocf", field, c.Type)
	}
	if !validRefill(c.RefillSize) {
		return fmt.Errorf("cacheConfig.refillSize %d: must be a power of 2 and a multiple of 4096", c.RefillSize)
	}
	if g.GzipCacheConfig.Enable && !validRefill(g.GzipCacheConfig.RefillSize) {
		return fmt.Errorf("gzipCacheConfig.refillSize %d: must be a power of 2 and a multiple of 4096", g.GzipCacheConfig.RefillSize)
	}
	if c.Type == "ocf" && !validRefill(c.BlockSize) {
		return fmt.Errorf("cacheConfig.blockSize %d: must be a power of 2 and a multiple of 4096", c.BlockSize)
	}
	if g.EnableThread && c.Type == "file" {
		return errors.New("enableThread: not supported with cacheType \"file\"")
	}
	switch g.CredentialConfig.Mode {
	case "", "file", "http", "https", "uds":
	default:
		return fmt.Errorf("credentialConfig.mode %q: want file|http|https|uds", g.CredentialConfig.Mode)
	}
	switch p := g.P2PConfig; p.Mode {
	case "", P2PModeProxy, P2PModeDragonfly:
	case P2PModePeers:
		if p.Enable && p.Token == "" && p.TokenFile == "" {
			return errors.New("p2pConfig: mode \"peers\" needs token or tokenFile")
		}
		if p.Enable && len(p.Peers) == 0 && p.PeersFile == "" {
			return errors.New("p2pConfig: mode \"peers\" needs peers or peersFile")
		}
		if p.FanOut < 0 {
			return fmt.Errorf("p2pConfig.fanOut %d: must be >= 0", p.FanOut)
		}
		if (p.TLSCert == "") != (p.TLSKey == "") {
			return errors.New("p2pConfig: tlsCert and tlsKey go together")
		}
	default:
		return fmt.Errorf("p2pConfig.mode %q: want proxy|dragonfly|peers", p.Mode)
	}
	if g.PrefetchConcurrency <= 0 {
		return fmt.Errorf("prefetchConfig.concurrency %d: must be > 0", g.PrefetchConcurrency)
	}
	return validateDownload("download", g.Download)
}

func validRefill(n uint32) bool {
	return n >= 4096 && n&(n-1) == 0
}

// LogSettings is the effective logging setup after the legacy fallback.
type LogSettings struct {
	Level     uint32
	Path      string
	SizeBytes uint64
	RotateNum int
}

// Log applies the daemon's rule: logConfig.logPath empty → the top-level logLevel and
// logPath with 10 MiB × 3 rotation.
func (g *GlobalConfig) Log() LogSettings {
	if g.LogConfig.Path == "" {
		return LogSettings{Level: g.LegacyLogLevel, Path: g.LegacyLogPath, SizeBytes: 10 << 20, RotateNum: 3}
	}
	return LogSettings{
		Level: g.LogConfig.Level, Path: g.LogConfig.Path,
		SizeBytes: uint64(g.LogConfig.SizeMB) << 20, RotateNum: g.LogConfig.RotateNum,
	}
}

// Cache returns the effective registry cache: cacheConfig.cacheType empty → the
// top-level cacheType, registryCacheDir and registryCacheSizeGB. RefillSize and
// BlockSize always come from cacheConfig.
func (g *GlobalConfig) Cache() CacheConfig {
	c := g.CacheConfig
	if c.Type == "" {
		c.Type, c.Dir, c.SizeGB = g.LegacyCacheType, g.LegacyCacheDir, g.LegacyCacheSizeGB
	}
	return c
}

// DownloadDirBytes is the bound of the daemon's download layer directories:
// downloadDirSizeGB, or the cache's size when it is 0.
func (g *GlobalConfig) DownloadDirBytes() int64 {
	gb := g.DownloadDirSizeGB
	if gb == 0 {
		gb = g.Cache().SizeGB
	}
	return int64(gb) << 30
}

// Credentials returns the effective credential source: credentialConfig.mode empty →
// file mode on credentialFilePath. An empty Path means no credentials.
func (g *GlobalConfig) Credentials() CredentialConfig {
	c := g.CredentialConfig
	if c.Mode == "" {
		c.Mode, c.Path = "file", g.CredentialFilePath
	}
	return c
}
