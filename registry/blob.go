package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/obd-project/obd/internal/blobio"
	"go.uber.org/zap"
)

// maxRedirects bounds the redirect chain followed from blob storage.
const maxRedirects = 8

// Blob reads byte ranges of one registry blob. It is an io.ReaderAt (and the
// cache package's Source): safe for concurrent use, each ReadAt an independent
// HTTP range request with its own retry budget.
type Blob struct {
	c      *Client
	url    string // as given: scheme://host/v2/<repo>/blobs/<digest>
	red    string // url without query, for messages
	repo   name.Repository
	digest string
	host   string // the registry's host[:port]: the fetch group of the cache
	size   int64

	ctx    context.Context // cancelled by Close: aborts reads in flight
	cancel context.CancelFunc

	mu       sync.Mutex
	loc      *location // blob-storage URL the registry redirected to; nil: ask the registry
	selfETag string    // ETag of the registry's own answers

	selfServes atomic.Bool // the registry answered a range itself (Self mode)
}

// location is a resolved redirect target, valid until expires.
type location struct {
	url     string
	expires time.Time
	etag    string // first ETag seen from it (guarded by Blob.mu)
}

// OpenBlob opens blobURL (repoBlobUrl + "/" + digest) with a fresh Client; see
// Client.OpenBlob. Long-lived callers share one Client instead.
func OpenBlob(ctx context.Context, blobURL string, size int64, opts Options) (*Blob, error) {
	c, err := NewClient(opts)
	if err != nil {
		return nil, err
	}
	return c.OpenBlob(ctx, blobURL, size)
}

// OpenBlob opens a blob by URL ("scheme://host/v2/<repo>/blobs/<digest>") and
// checks it is reachable with the configured credentials by reading its first
// byte, so auth and not-found errors surface here. size is the expected size
// from the manifest or config (an error if the registry disagrees); 0 means ask the
// registry. Plain HTTP is used only for loopback hosts and Options.PlainHTTP: an
// http:// URL naming another host is fetched over https.
func (c *Client) OpenBlob(ctx context.Context, blobURL string, size int64) (*Blob, error) {
	if b := c.openMirrorBlob(ctx, blobURL, size); b != nil {
		return b, nil
	}
	return c.openBlobAt(ctx, blobURL, size)
}

// openBlobAt is OpenBlob without mirrors.
func (c *Client) openBlobAt(ctx context.Context, blobURL string, size int64) (*Blob, error) {
	if size < 0 {
		return nil, fmt.Errorf("blob %s: negative size %d", redactURL(blobURL), size)
	}
	if err := c.checkSize(blobURL, size, "expected"); err != nil {
		return nil, err
	}
	b, err := c.newBlob(blobURL, -1)
	if err != nil {
		return nil, err
	}
	var one [1]byte
	if err := b.fetch(ctx, blobio.Exact, one[:], 0); err != nil {
		b.cancel()
		return nil, fmt.Errorf("open blob %s: %w", b.red, withTLSHint(b.repo.RegistryStr(), err))
	}
	if size != 0 && b.size != size {
		b.cancel()
		return nil, fmt.Errorf("open blob %s: %w: size %d expected, registry has %d", b.red, ErrBadResponse, size, b.size)
	}
	return b, nil
}

// LazyBlob is OpenBlob without the probe: it makes no request until the first
// ReadAt, so auth and not-found errors surface there. size must be the blob's
// true size (from the manifest): it is what reads are bounded by, and an answer
// disagreeing with it fails the read. It is for blobs a local cache already
// holds whole, so that reopening them needs no network.
func (c *Client) LazyBlob(blobURL string, size int64) (*Blob, error) {
	if size <= 0 {
		return nil, fmt.Errorf("blob %s: lazy open needs the size, got %d", redactURL(blobURL), size)
	}
	if err := c.checkSize(blobURL, size, "expected"); err != nil {
		return nil, err
	}
	return c.newBlob(blobURL, size)
}

// ErrTooLarge is wrapped by the error for a blob whose size (from a manifest, a
// config, a peer or the registry's answer) exceeds Options.MaxBlobSize.
var ErrTooLarge = errors.New("blob size above the limit")

// checkSize refuses a blob size above Options.MaxBlobSize: sizes come from
// outside, and readers size their state by them.
func (c *Client) checkSize(blobURL string, size int64, what string) error {
	if size <= c.opts.MaxBlobSize {
		return nil
	}
	c.opts.Logger.Warn("registry blob refused: size above the limit", zap.String("url", redactURL(blobURL)),
		zap.String("from", what), zap.Int64("size", size), zap.Int64("limit", c.opts.MaxBlobSize))
	if o, ok := c.opts.Observer.(OversizeObserver); ok {
		o.OversizeRefused()
	}
	return fmt.Errorf("blob %s: %w: %s size %d, limit %d (MaxBlobSize)", redactURL(blobURL), ErrTooLarge, what, size, c.opts.MaxBlobSize)
}

// OversizeObserver is an optional capability of an Observer: told of every blob
// refused for its size.
type OversizeObserver interface {
	OversizeRefused()
}

// newBlob checks blobURL and returns an unopened Blob of size (-1: unknown).
func (c *Client) newBlob(blobURL string, size int64) (*Blob, error) {
	host, repoPath, digest, err := splitBlobURL(blobURL)
	if err != nil {
		return nil, err
	}
	repo, err := c.repository(host, repoPath)
	if err != nil {
		return nil, err
	}
	b := &Blob{c: c, url: blobURL, red: redactURL(blobURL), repo: repo, digest: digest, host: host, size: size}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// splitBlobURL checks and splits a blob URL.
func splitBlobURL(s string) (host, repo, digest string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a signature
		}
		return "", "", "", fmt.Errorf("blob URL %s: %w", redactURL(s), err)
	}
	bad := func(why string) error {
		return fmt.Errorf("blob URL %s: %s; want scheme://host/v2/<repo>/blobs/<digest>", redactURL(s), why)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", "", "", bad("scheme " + u.Scheme)
	}
	if u.Host == "" {
		return "", "", "", bad("no host")
	}
	p, ok := strings.CutPrefix(u.Path, "/v2/")
	if !ok {
		return "", "", "", bad("path does not start with /v2/")
	}
	i := strings.LastIndex(p, "/blobs/")
	if i <= 0 {
		return "", "", "", bad("no /blobs/ in the path")
	}
	repo, digest = p[:i], p[i+len("/blobs/"):]
	if _, err := v1.NewHash(digest); err != nil {
		return "", "", "", bad(fmt.Sprintf("digest %q: %v", digest, err))
	}
	return u.Host, repo, digest, nil
}

// Size is the blob size in bytes.
func (b *Blob) Size() int64 { return b.size }

// FetchGroup is the registry's host: the cache limits concurrent fetches per
// registry, so a registry that hangs holds only its own share (cache.FetchGrouper).
func (b *Blob) FetchGroup() string { return b.host }

// URL is the blob URL the Blob was opened with.
func (b *Blob) URL() string { return b.url }

// Close aborts reads in flight; later reads fail with os.ErrClosed.
func (b *Blob) Close() error {
	b.cancel()
	return nil
}

// ReadAt reads len(p) bytes at off (fewer, with io.EOF, at the end of the blob).
// On error it returns 0: p may hold partial data, but no byte of it is reported.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtIntent(b.ctx, blobio.Demand, p, off)
}

// ReadAtIntent is ReadAt bounded also by ctx, with the read's intent: a data
// request goes to the DataProxy with it (Dragonfly's priority).
func (b *Blob) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	if b.ctx.Err() != nil {
		return 0, fmt.Errorf("blob %s: %w", b.red, os.ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("blob %s: negative offset %d", b.red, off)
	}
	if off >= b.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > b.size-off {
		n = int(b.size - off)
	}
	if n == 0 {
		return 0, nil
	}
	if ctx != b.ctx {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(b.ctx, cancel)
		defer stop()
	}
	if err := b.fetch(ctx, in, p[:n], off); err != nil {
		if b.ctx.Err() != nil {
			return 0, fmt.Errorf("blob %s: %w", b.red, os.ErrClosed)
		}
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// failure says how a failed attempt ends the read or is retried.
type failure int

const (
	transient   failure = iota // retry after backoff (5xx, connection errors, short bodies, bad framing)
	throttled                  // 429: retry after Retry-After or backoff
	reauth                     // 401/403: re-resolve / re-handshake, then retry at once
	gone                       // 404/410 from blob storage: re-resolve once
	etagChanged                // another ETag than before: retry at once, then accept it
	fatal                      // do not retry
)

type attemptError struct {
	err        error
	kind       failure
	retryAfter time.Duration // 429 only; 0 = unknown
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

func failed(kind failure, format string, args ...any) *attemptError {
	return &attemptError{err: fmt.Errorf(format, args...), kind: kind}
}

// fetch fills p with bytes [off, off+len(p)) of the blob, retrying within the
// policy. Bytes that arrived before an interruption are kept: the next attempt
// asks only for the rest. With b.size < 0 (OpenBlob) it learns the size.
func (b *Blob) fetch(ctx context.Context, in blobio.Intent, p []byte, off int64) error {
	pol := b.c.opts.Retry
	ctx, cancel := context.WithTimeout(ctx, pol.Deadline)
	defer cancel()
	done, reauths, regone := 0, 0, 0
	trustETag := false
	var last *attemptError
	for attempt := 1; ; attempt++ {
		n, ae := b.attempt(ctx, in, p[done:], off+int64(done), trustETag)
		done += n
		if ae == nil {
			if obs := b.c.opts.Observer; obs != nil {
				obs.Bytes(int64(len(p)))
			}
			return nil
		}
		last = ae
		if ctx.Err() != nil {
			break
		}
		var wait time.Duration
		switch ae.kind {
		case fatal:
			return fmt.Errorf("read %s [%d, +%d): %w", b.red, off, len(p), ae.err)
		case reauth:
			if reauths++; reauths > 1 {
				return fmt.Errorf("read %s [%d, +%d): %w", b.red, off, len(p), ae.err)
			}
		case etagChanged:
			// The digest names the bytes; a new ETag may be another replica's. Ask
			// once more, then take the answer: CRC and digest checks judge bytes.
			trustETag = true
		case gone:
			if regone++; regone > 1 {
				return fmt.Errorf("read %s [%d, +%d): %w: %w", b.red, off, len(p), ErrNotFound, ae.err)
			}
		case throttled:
			wait = ae.retryAfter
			if wait > pol.MaxRetryAfter {
				wait = pol.MaxRetryAfter
			}
			if wait == 0 {
				wait = backoff(pol, attempt)
			}
		default:
			wait = backoff(pol, attempt)
		}
		if attempt >= pol.MaxAttempts {
			break
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			break // the deadline would pass while waiting: fail now
		}
		if obs := b.c.opts.Observer; obs != nil {
			obs.Retry(ae.kind.String(), wait)
		}
		b.c.opts.Logger.Debug("registry read retry", zap.String("url", b.red), zap.Int64("off", off),
			zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(ae.err))
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			if ctx.Err() != nil {
				break
			}
		}
	}
	err := fmt.Errorf("%w: read %s [%d, +%d) failed within %d attempts / %v: %w",
		ErrUnavailable, b.red, off, len(p), pol.MaxAttempts, pol.Deadline, last.err)
	b.c.opts.Logger.Warn("registry read failed", zap.Error(err))
	return err
}

func (k failure) String() string {
	switch k {
	case transient:
		return "transient"
	case throttled:
		return "throttled"
	case reauth:
		return "reauth"
	case gone:
		return "gone"
	case etagChanged:
		return "etag"
	}
	return "fatal"
}

// backoff is exponential with ±50% jitter, capped.
func backoff(pol RetryPolicy, attempt int) time.Duration {
	d := pol.BaseDelay
	for i := 1; i < attempt && d < pol.MaxDelay; i++ {
		d *= 2
	}
	if d > pol.MaxDelay {
		d = pol.MaxDelay
	}
	return d/2 + time.Duration(rand.Int64N(int64(d)+1))
}

// attempt makes one request (plus the storage request if the registry redirects)
// and returns how many bytes of p it filled.
func (b *Blob) attempt(ctx context.Context, in blobio.Intent, p []byte, off int64, trustETag bool) (int, *attemptError) {
	actx, cancel := context.WithTimeout(ctx, b.c.opts.Retry.AttemptTimeout)
	defer cancel()
	b.mu.Lock()
	loc := b.loc
	if loc != nil && time.Now().After(loc.expires) {
		b.loc, loc = nil, nil
	}
	b.mu.Unlock()

	if loc == nil {
		rt, err := b.c.authTransport(actx, b.repo)
		if err != nil {
			return 0, handshakeFailure(err)
		}
		req, err := b.request(actx, b.url, p, off)
		if err != nil {
			return 0, failed(fatal, "%w", err)
		}
		if b.selfServes.Load() {
			// Known to serve the blob itself (Self mode): a data request, for the
			// DataProxy. The first request resolves the mode directly.
			req = b.dataRequest(req, in)
		}
		client := &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Do(req)
		if err != nil {
			ae := transportFailure(err)
			if ae.kind == reauth {
				b.c.forgetAuth(b.repo)
			}
			return 0, ae
		}
		if isRedirect(resp.StatusCode) {
			resp.Body.Close()
			l := resp.Header.Get("Location")
			target, err := req.URL.Parse(l)
			if l == "" || err != nil {
				return 0, failed(transient, "%w: %s: HTTP %d redirect without a usable Location", ErrBadResponse, b.red, resp.StatusCode)
			}
			loc = b.newLocation(target.String())
		} else {
			defer resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				b.selfServes.Store(true)
			}
			n, ae := b.body(resp, p, off, nil, trustETag)
			if ae != nil && ae.kind == reauth {
				b.c.forgetAuth(b.repo) // handshake again: fresh credentials and token
			}
			return n, ae
		}
	}

	target := loc.url
	if rw := b.c.opts.RewriteURL; rw != nil {
		target = rw(target)
	}
	req, err := b.request(actx, target, p, off)
	if err != nil {
		return 0, failed(fatal, "%w", err)
	}
	req = b.dataRequest(req, in)
	client := &http.Client{Transport: b.c, CheckRedirect: func(_ *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("more than %d redirects", maxRedirects)
		}
		return nil
	}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, transportFailure(err)
	}
	defer resp.Body.Close()
	n, ae := b.body(resp, p, off, loc, trustETag)
	if ae != nil && (ae.kind == reauth || ae.kind == gone) {
		b.dropLocation(loc) // expired or revoked signed URL: ask the registry again
	}
	return n, ae
}

func (b *Blob) request(ctx context.Context, u string, p []byte, off int64) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %v", b.red, redactErr(err))
	}
	req.Header.Set("Range", FormatRange(off, off+int64(len(p))-1))
	return req, nil
}

// dataRequest marks req for the DataProxy, if there is one, with the read's intent.
func (b *Blob) dataRequest(req *http.Request, in blobio.Intent) *http.Request {
	if b.c.opts.DataProxy == nil {
		return req
	}
	return req.WithContext(withDataRequest(req.Context(), req.URL.String(), in))
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func (b *Blob) newLocation(u string) *location {
	ttl := b.c.opts.RedirectTTL
	if exp, ok := signedURLExpiry(u); ok {
		// Stop using a signed URL a little before it expires.
		if until := time.Until(exp) - 10*time.Second; until < ttl {
			ttl = until
		}
	}
	if ttl < 0 {
		ttl = 0
	}
	l := &location{url: u, expires: time.Now().Add(ttl)}
	b.mu.Lock()
	b.loc = l
	b.mu.Unlock()
	return l
}

func (b *Blob) dropLocation(l *location) {
	b.mu.Lock()
	if b.loc == l {
		b.loc = nil
	}
	b.mu.Unlock()
}

// handshakeFailure classifies an auth-transport setup error.
func handshakeFailure(err error) *attemptError {
	switch {
	case errors.Is(err, ErrUnauthorized):
		return &attemptError{err: err, kind: reauth}
	case errors.Is(err, ErrNotFound):
		return &attemptError{err: err, kind: fatal}
	case errors.Is(err, ErrUnavailable):
		return &attemptError{err: err, kind: transient}
	}
	return &attemptError{err: err, kind: fatal}
}

// transportFailure classifies an error from http.Client.Do: token refresh
// failures (as *transport.Error), refusals that will not change (plain HTTP to a
// remote host, TLS verification), and the rest, which is worth another try.
func transportFailure(err error) *attemptError {
	err = redactErr(err)
	if isPermanent(err) {
		return &attemptError{err: err, kind: fatal}
	}
	ae := handshakeFailure(classify(err))
	if ae.kind == fatal && !errors.Is(err, ErrNotFound) {
		ae.kind = transient
	}
	return ae
}

// body checks a response against the requested range and copies it into p. loc is
// the redirect location that answered (nil: the registry itself).
func (b *Blob) body(resp *http.Response, p []byte, off int64, loc *location, trustETag bool) (int, *attemptError) {
	want := int64(len(p))
	src := b.red // where the answer came from, for messages
	if loc != nil && resp.Request != nil {
		src = redactURL(resp.Request.URL.String())
	}
	switch code := resp.StatusCode; {
	case code == http.StatusPartialContent || code == http.StatusOK:
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return 0, &attemptError{err: fmt.Errorf("%w: %w", ErrUnauthorized, &StatusError{src, code}), kind: reauth}
	case code == http.StatusNotFound || code == http.StatusGone:
		if loc == nil {
			return 0, &attemptError{err: fmt.Errorf("%w: %w", ErrNotFound, &StatusError{src, code}), kind: fatal}
		}
		return 0, &attemptError{err: &StatusError{src, code}, kind: gone}
	case code == http.StatusTooManyRequests:
		ra, _ := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		return 0, &attemptError{err: &StatusError{src, code}, kind: throttled, retryAfter: ra}
	case code == http.StatusRequestTimeout || code >= 500:
		// A 503 may say when to come back; honour it like a 429's.
		if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok && code == http.StatusServiceUnavailable {
			return 0, &attemptError{err: &StatusError{src, code}, kind: throttled, retryAfter: ra}
		}
		return 0, &attemptError{err: &StatusError{src, code}, kind: transient}
	case code == http.StatusRequestedRangeNotSatisfiable:
		return 0, failed(fatal, "%w: %w (range %d-%d of a %d-byte blob)", ErrBadResponse, &StatusError{src, code}, off, off+want-1, b.size)
	default:
		return 0, failed(fatal, "%w: %w", ErrBadResponse, &StatusError{src, code})
	}
	if d := resp.Header.Get("Docker-Content-Digest"); d != "" && d != b.digest {
		return 0, failed(fatal, "%w: %s: Docker-Content-Digest %s, want %s", ErrBadResponse, src, d, b.digest)
	}
	if ae := b.checkETag(resp.Header.Get("ETag"), loc, src, trustETag); ae != nil {
		return 0, ae
	}

	var skip int64
	if resp.StatusCode == http.StatusOK {
		// The server ignored Range and sends the whole blob: usable only if it says
		// so exactly and the range is near the start.
		total := resp.ContentLength
		if total < 0 || (b.size >= 0 && total != b.size) {
			return 0, failed(transient, "%w: %s: HTTP 200 with Content-Length %d for range %d-%d of a %d-byte blob",
				ErrBadResponse, src, total, off, off+want-1, b.size)
		}
		if off+want > total {
			return 0, failed(transient, "%w: %s: HTTP 200 with %d bytes, range %d-%d asked", ErrBadResponse, src, total, off, off+want-1)
		}
		if off > b.c.opts.MaxSkip {
			return 0, failed(fatal, "%w: %s: server ignores Range (HTTP 200 for range at %d)", ErrBadResponse, src, off)
		}
		if b.size < 0 {
			if err := b.c.checkSize(b.url, total, "HTTP 200 Content-Length"); err != nil {
				return 0, failed(fatal, "%w", err)
			}
			b.size = total
		}
		skip = off
	} else {
		cr, err := ParseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return 0, failed(transient, "%w: %s: %v", ErrBadResponse, src, err)
		}
		if cr.First != off || cr.Last != off+want-1 {
			return 0, failed(transient, "%w: %s: Content-Range %d-%d, asked %d-%d", ErrBadResponse, src, cr.First, cr.Last, off, off+want-1)
		}
		switch {
		case b.size < 0 && cr.Total < 0:
			return 0, failed(fatal, "%w: %s: Content-Range total is *, blob size unknown", ErrBadResponse, src)
		case b.size < 0:
			if err := b.c.checkSize(b.url, cr.Total, "Content-Range total"); err != nil {
				return 0, failed(fatal, "%w", err)
			}
			b.size = cr.Total
		case cr.Total >= 0 && cr.Total != b.size:
			return 0, failed(fatal, "%w: %s: blob changed: size %d, was %d", ErrBadResponse, src, cr.Total, b.size)
		}
		if resp.ContentLength >= 0 && resp.ContentLength != want {
			return 0, failed(transient, "%w: %s: Content-Length %d for a %d-byte range", ErrBadResponse, src, resp.ContentLength, want)
		}
	}
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, resp.Body, skip); err != nil {
			return 0, failed(transient, "%s: full-body answer: %v", src, redactErr(err))
		}
	}
	n, err := io.ReadFull(resp.Body, p)
	if err != nil {
		// Framing was checked, so the bytes before the cut are the right ones.
		return n, failed(transient, "%s: body ended after %d of %d bytes: %v", src, n, want, redactErr(err))
	}
	if resp.StatusCode == http.StatusPartialContent {
		var extra [1]byte
		if m, _ := resp.Body.Read(extra[:]); m > 0 {
			return 0, failed(transient, "%w: %s: body longer than the %d-byte range", ErrBadResponse, src, want)
		}
	}
	return n, nil
}

// checkETag reports a source that answers with another ETag than before. Blob
// URLs are content-addressed, so that is not a changed blob by itself (replicas
// behind a load balancer compute ETags of their own): the read asks once more,
// and with trust set it takes the new ETag.
func (b *Blob) checkETag(tag string, loc *location, src string, trust bool) *attemptError {
	if tag == "" {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	slot := &b.selfETag
	if loc != nil {
		slot = &loc.etag
	}
	if *slot == "" || *slot == tag {
		*slot = tag
		return nil
	}
	if trust {
		b.c.opts.Logger.Debug("registry blob ETag changed: bytes trusted (content-addressed)",
			zap.String("url", src), zap.String("etag", tag), zap.String("was", *slot))
		*slot = tag
		return nil
	}
	return failed(etagChanged, "%w: %s: ETag %s, was %s", ErrBadResponse, src, tag, *slot)
}

// redactErr strips query strings from the URL a *url.Error carries.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return &url.Error{Op: ue.Op, URL: redactURL(ue.URL), Err: ue.Err}
	}
	return err
}
