package registry

import (
	"net/http"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// Version is reported in the User-Agent ("obd/<Version>"); the build sets it with
// -ldflags "-X github.com/obd-project/obd/registry.Version=...".
var Version = "dev"

// DefaultMaxBlobSize is Options.MaxBlobSize's default.
const DefaultMaxBlobSize = 4 << 40

// Options configure a Client. The zero value is usable: Docker config credentials,
// verified TLS, linux/amd64, and the retry defaults below.
type Options struct {
	// Keychain supplies credentials; nil means authn.DefaultKeychain (docker
	// config.json and credential helpers).
	Keychain authn.Keychain
	// CredentialFile is the reference's credentialConfig "file" mode path; when
	// set it is consulted before Keychain.
	CredentialFile string
	// CredentialService is the reference's credentialConfig http/https/uds
	// modes; when set it is consulted first.
	CredentialService *CredentialService

	// PlainHTTP lists registries ("host" or "host:port") reached over plain HTTP.
	// Loopback hosts (localhost, 127.0.0.0/8, [::1]) always may; any other http://
	// request is refused, so a registry can never be downgraded silently.
	PlainHTTP []string
	// InsecureSkipVerify lists hosts whose TLS certificate is not verified.
	InsecureSkipVerify []string
	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string
	// CertFile and KeyFile are a client certificate (the reference's certConfig).
	CertFile, KeyFile string
	// Mirrors maps a registry ("host[:port]"; "docker.io" stands for Docker Hub)
	// to mirrors tried in order before it, for manifests and blobs (OpenBlob);
	// the registry itself is the fallback.
	Mirrors map[string][]string

	// UserAgent defaults to "obd/" + Version.
	UserAgent string
	// Platform picks the manifest out of an index; nil means linux on this
	// machine's architecture (runtime.GOARCH).
	Platform *v1.Platform

	// Retry bounds every blob read and manifest resolution.
	Retry RetryPolicy
	// RedirectTTL is how long a resolved blob-storage URL is reused (default 5 min;
	// shorter when the signed URL says it expires sooner).
	RedirectTTL time.Duration
	// MaxSkip is how far into a 200 (full-body) answer to a range request the reader
	// will discard to reach the range; beyond it such an answer is an error.
	// Default 1 MiB.
	MaxSkip int64
	// MaxBlobSize bounds the size of a blob: from a manifest, a config or the
	// registry's answer (default 4 TiB). A larger one is refused (ErrTooLarge).
	MaxBlobSize int64

	// DialTimeout, TLSHandshakeTimeout and ResponseHeaderTimeout default to 10 s.
	DialTimeout, TLSHandshakeTimeout, ResponseHeaderTimeout time.Duration
	// MaxIdleConnsPerHost is the keep-alive pool per host (default 32: enough for
	// parallel range reads).
	MaxIdleConnsPerHost int

	// Observer, if set, is told about requests, bytes and retries.
	Observer Observer
	// RewriteURL, if set, rewrites the blob-storage URL a registry redirected to
	// before each data request (not the registry, token or redirect resolution
	// requests): the P2P proxy hook, e.g.
	// func(u string) string { return "http://localhost:19145/dadip2p/" + u }.
	// An http:// proxy must be loopback or listed in PlainHTTP. Registries that
	// serve blobs themselves (no redirect) are read directly.
	RewriteURL func(string) string
	// DataProxy, if set, carries blob data requests (the registry's own answer in
	// Self mode, with its Authorization header, and the storage URL it redirected
	// to), never the ping, token or redirect-resolution requests: the P2P proxy
	// and Dragonfly modes of package p2p.
	DataProxy DataProxy

	// Logger defaults to zap.L(). URLs are logged without their query strings;
	// credentials and tokens are never logged.
	Logger *zap.Logger
}

// RetryPolicy bounds how hard one read tries. Both limits apply: a read ends at
// MaxAttempts requests or after Deadline, whichever comes first.
type RetryPolicy struct {
	MaxAttempts    int           // default 5
	Deadline       time.Duration // per read, default 30 s
	AttemptTimeout time.Duration // per request, default 10 s (progress is kept)
	BaseDelay      time.Duration // first backoff, default 100 ms; doubles, ±50% jitter
	MaxDelay       time.Duration // backoff cap, default 5 s
	MaxRetryAfter  time.Duration // cap on a server's Retry-After, default 10 s
}

// Observer receives metrics events; the daemon adapts it to Prometheus. Methods
// are called concurrently and must not block.
type Observer interface {
	// Request reports one HTTP exchange: status (0 on a transport error) and the
	// time to response headers.
	Request(host string, status int, latency time.Duration)
	// Bytes reports blob payload bytes delivered to a reader.
	Bytes(n int64)
	// Retry reports that a read will try again after wait.
	Retry(reason string, wait time.Duration)
}

// DataProxy sends a blob data request through a P2P proxy. req is the request as
// it would go directly (Range, User-Agent and, to the registry itself,
// Authorization set); direct sends it that way. A proxy that fails (cannot be
// reached, answers with an error of its own, frames the range wrongly) must fall
// back to direct itself, so that its failures neither use up the read's retry
// budget nor look like a registry or blob fault. in is the intent of the read
// the request serves (registry.Blob.ReadAtIntent). Called concurrently.
type DataProxy interface {
	RoundTrip(req *http.Request, direct http.RoundTripper, in blobio.Intent) (*http.Response, error)
}

func (o Options) withDefaults() Options {
	if o.UserAgent == "" {
		o.UserAgent = "obd/" + Version
	}
	if o.Platform == nil {
		o.Platform = &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	}
	r := &o.Retry
	if r.MaxAttempts <= 0 {
		r.MaxAttempts = 5
	}
	if r.Deadline <= 0 {
		r.Deadline = 30 * time.Second
	}
	if r.AttemptTimeout <= 0 {
		r.AttemptTimeout = 10 * time.Second
	}
	if r.BaseDelay <= 0 {
		r.BaseDelay = 100 * time.Millisecond
	}
	if r.MaxDelay <= 0 {
		r.MaxDelay = 5 * time.Second
	}
	if r.MaxRetryAfter <= 0 {
		r.MaxRetryAfter = 10 * time.Second
	}
	if o.RedirectTTL <= 0 {
		o.RedirectTTL = 5 * time.Minute
	}
	if o.MaxSkip <= 0 {
		o.MaxSkip = 1 << 20
	}
	if o.MaxBlobSize <= 0 {
		o.MaxBlobSize = DefaultMaxBlobSize
	}
	for _, d := range []*time.Duration{&o.DialTimeout, &o.TLSHandshakeTimeout, &o.ResponseHeaderTimeout} {
		if *d <= 0 {
			*d = 10 * time.Second
		}
	}
	if o.MaxIdleConnsPerHost <= 0 {
		o.MaxIdleConnsPerHost = 32
	}
	if o.Logger == nil {
		o.Logger = zap.L()
	}
	return o
}
