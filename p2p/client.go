package p2p

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/registry"
	"go.uber.org/zap"
)

// The peer protocol: GET <peer>/obd/p2p/v1/blobs/<digest> with a single closed
// Range, the shared token as a bearer token, and the blob's registry URL and size
// (so that the owner can fetch a chunk it does not hold). Answer: 206 with
// Content-Range "bytes <first>-<last>/<size>" and exactly that many bytes.
const (
	blobPath       = "/obd/p2p/v1/blobs/"
	HeaderBlobURL  = "X-Obd-Blob-Url"
	HeaderBlobSize = "X-Obd-Blob-Size"
	// HeaderUpstreamError marks a peer's answer (502) saying that the peer is
	// fine but could not get the chunk itself (from the registry or its parent).
	HeaderUpstreamError = "X-Obd-Upstream-Error"
	defaultPeerTries    = 2
	defaultFanOut       = 8
	defaultParallel     = 8
	defaultTimeout      = 15 * time.Second
	defaultDialPeer     = 2 * time.Second
	// maxPeerWait bounds one peer request however often the peer says it is
	// still at it: several times the registry's own deadline for one read.
	maxPeerWait = 2 * time.Minute
)

// ClientOptions configure a Client.
type ClientOptions struct {
	Peers *PeerSet
	Token string      // shared fleet token (required)
	TLS   *tls.Config // for https:// peers; nil: system roots
	// ChunkSize is the unit of ownership: the cache refill unit, so that every
	// fill asks whole chunks (default cache.DefaultRefillSize).
	ChunkSize int
	// PeerTries is how many peers are asked for a chunk before the registry
	// (default 2: the owner, then the next in rendezvous order).
	PeerTries int
	// FanOut is the width of each chunk's distribution tree (default 8): see
	// upstream. With at most FanOut+1 nodes every node asks the owner directly.
	FanOut int
	// Parallel bounds the concurrent peer requests of one read (default 8).
	Parallel int
	// MaxPeerRequests and MaxRegistryReads bound this node's concurrent peer
	// requests (default 32) and registry reads, its own and its server's (default 8).
	// They are separate because a registry read never waits on a peer: a node
	// whose peer slots are all taken can still serve the chunks it owns, so
	// nodes waiting on each other cannot deadlock.
	MaxPeerRequests, MaxRegistryReads int
	// Timeout is how long a peer may stay silent during a request (default
	// 15 s). A peer waiting for the chunk itself (its registry fetch, or its
	// parent) says so every few seconds (102 Processing, ServerOptions.Heartbeat),
	// so a slow registry makes this node wait for the owner's one fetch rather
	// than fetch the chunk again; maxPeerWait bounds the whole request.
	Timeout time.Duration
	Metrics *Metrics
	Logger  *zap.Logger
}

// Client reads blob chunks from peers (built-in peer mode). It is shared by all
// blobs of a node.
type Client struct {
	o       ClientOptions
	http    *http.Client
	peerSem chan struct{}
	regSem  chan struct{}
}

// NewClient checks o and makes a Client.
func NewClient(o ClientOptions) (*Client, error) {
	if o.Peers == nil {
		return nil, errors.New("p2p: client without a peer set")
	}
	if o.Token == "" {
		return nil, errors.New("p2p: peer mode needs a token")
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = cache.DefaultRefillSize
	}
	if o.PeerTries <= 0 {
		o.PeerTries = defaultPeerTries
	}
	if o.FanOut <= 0 {
		o.FanOut = defaultFanOut
	}
	if o.Parallel <= 0 {
		o.Parallel = defaultParallel
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.MaxPeerRequests <= 0 {
		o.MaxPeerRequests = 32
	}
	if o.MaxRegistryReads <= 0 {
		o.MaxRegistryReads = cache.DefaultMaxFetches
	}
	if o.Logger == nil {
		o.Logger = zap.L()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = o.TLS
	tr.MaxIdleConnsPerHost = 16
	tr.DialContext = (&netDialer{timeout: defaultDialPeer}).DialContext
	return &Client{o: o, peerSem: make(chan struct{}, o.MaxPeerRequests), regSem: make(chan struct{}, o.MaxRegistryReads),
		http: &http.Client{Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

// RegistrySource bounds src's reads by the node's registry-read limit; the peer
// server's registry sources go through it.
// Its bytes count as "registry" bytes.
func (c *Client) RegistrySource(src cache.Source) cache.Source {
	return &limited{src, c.regSem, c.o.Metrics}
}

// limited is a cache.Source whose reads hold a slot of sem.
type limited struct {
	cache.Source
	sem chan struct{}
	m   *Metrics
}

func (l *limited) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	l.sem <- struct{}{}
	defer func() { <-l.sem }()
	n, err := l.Source.ReadAtIntent(ctx, in, p, off)
	l.m.bytes("registry", n)
	return n, err
}

func (l *limited) Close() error {
	if c, ok := l.Source.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Close drops idle peer connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Source wraps the registry source of blob digest (at url) so that chunks are
// read from their owners first. It is a cache.Source; the cache in front of it
// verifies and keeps what it returns.
func (c *Client) Source(digest, url string, reg cache.Source) *Source {
	return c.source(digest, url, reg)
}

// ServerSource is Source for the peer server's handles: Close closes reg.
func (c *Client) ServerSource(digest, url string, reg cache.Source) cache.Source {
	return &closingSource{c.source(digest, url, reg), reg}
}

type closingSource struct {
	*Source
	reg cache.Source
}

func (s *closingSource) Close() error {
	if c, ok := s.reg.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

func (c *Client) source(digest, url string, reg cache.Source) *Source {
	return &Source{c: c, digest: digest, url: url, reg: c.RegistrySource(reg), served: map[int64]string{}, avoid: map[int64]string{}}
}

// Source is one blob read chunk by chunk from peers, then the registry.
type Source struct {
	c      *Client
	digest string
	url    string
	reg    cache.Source

	mu     sync.Mutex
	served map[int64]string // chunk → peer whose bytes the cache got last ("" or absent: registry)
	avoid  map[int64]string // chunk → peer that served it bad bytes
}

var _ cache.Source = (*Source)(nil)

// Size is the blob size.
func (s *Source) Size() int64 { return s.reg.Size() }

// ReadAt reads p at off on demand (ReadAtIntent).
func (s *Source) ReadAt(p []byte, off int64) (int, error) {
	return s.ReadAtIntent(context.Background(), blobio.Demand, p, off)
}

// ReadAtIntent reads p at off: each chunk piece from its owner, else the next
// peer, else the registry, which gets ctx and in (peers do not take an intent).
// Pieces are fetched in parallel.
func (s *Source) ReadAtIntent(ctx context.Context, in blobio.Intent, p []byte, off int64) (int, error) {
	size := s.reg.Size()
	if off < 0 {
		return 0, fmt.Errorf("p2p: blob %s: negative offset %d", s.digest, off)
	}
	if off >= size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > size-off {
		want = p[:size-off]
	}
	cs := int64(s.c.o.ChunkSize)
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.c.o.Parallel)
	var errMu sync.Mutex
	var firstErr error
	for pos := off; pos < off+int64(len(want)); {
		end := min((pos/cs+1)*cs, off+int64(len(want)))
		piece := want[pos-off : end-off]
		chunk, at := pos/cs, pos
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := s.readChunk(ctx, in, piece, at, chunk); err != nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			}
		}()
		pos = end
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if len(want) < len(p) {
		return len(want), io.EOF
	}
	return len(p), nil
}

func (s *Source) readChunk(ctx context.Context, in blobio.Intent, p []byte, off, chunk int64) error {
	set := s.c.o.Peers
	self := set.Self()
	s.mu.Lock()
	bad := s.avoid[chunk]
	s.mu.Unlock()
	tries := 0
	for _, peer := range upstream(set.Ranked(ChunkKey(s.digest, chunk)), self, s.c.o.FanOut) {
		if tries >= s.c.o.PeerTries {
			break
		}
		if peer == bad {
			continue
		}
		tries++
		s.c.peerSem <- struct{}{}
		err := s.fromPeer(peer, p, off)
		<-s.c.peerSem
		if err == nil {
			s.mu.Lock()
			s.served[chunk] = peer
			s.mu.Unlock()
			s.c.o.Metrics.bytes("peer", len(p))
			return nil
		}
		var pe *peerError
		reason := "other"
		if errors.As(err, &pe) {
			reason = pe.reason
		}
		s.c.o.Metrics.peerError(reason)
		if reason == "upstream" {
			// The peer could not fetch it (a missing blob, a registry
			// refusing it): not the peer's fault, and the peers above it
			// would fare no better. Ask the registry, whose error this node
			// then reports as its own.
			s.c.o.Metrics.fallback("peer", "registry")
			s.c.o.Logger.Debug("p2p peer could not fetch the chunk", zap.String("peer", peer), zap.String("blob", s.digest),
				zap.Int64("off", off), zap.Error(err))
			break
		}
		s.c.o.Metrics.fallback("peer", "next")
		set.Penalise(peer, err.Error())
		s.c.o.Logger.Debug("p2p peer read failed", zap.String("peer", peer), zap.String("blob", s.digest),
			zap.Int64("off", off), zap.Error(err))
	}
	n, err := s.reg.ReadAtIntent(ctx, in, p, off)
	if n == len(p) {
		err = nil
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.served, chunk)
	s.mu.Unlock()
	return nil
}

// upstream returns whom this node asks for a chunk, in order, given the chunk's
// rendezvous ranking: its parent in the chunk's tree, the parent's parent, and so
// on up to the owner (rank 0), which fetches from the registry. The tree is the
// ranking read as a heap of width fanOut: the node at rank r > 0 fetches from
// rank (r-1)/fanOut. Every chunk has a different tree, so every node relays some
// chunks and no node serves a chunk to the whole fleet; and a node only ever
// waits on nodes ranked above it, so waits cannot form a cycle. Empty when this
// node owns the chunk.
func upstream(ranked []string, self string, fanOut int) []string {
	pos := slices.Index(ranked, self)
	if pos < 0 {
		pos = len(ranked) // not in the fleet: a leaf below everyone
	}
	var out []string
	for pos > 0 {
		pos = (pos - 1) / fanOut
		out = append(out, ranked[pos])
	}
	return out
}

// peerError is a failed peer request with a metrics reason.
type peerError struct {
	reason string
	err    error
}

func (e *peerError) Error() string { return e.err.Error() }
func (e *peerError) Unwrap() error { return e.err }

func perr(reason, format string, args ...any) error {
	return &peerError{reason, fmt.Errorf(format, args...)}
}

func (s *Source) fromPeer(peer string, p []byte, off int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), maxPeerWait)
	defer cancel()
	// The request ends when the peer is silent for Timeout: its heartbeats
	// and its answer restart the clock.
	silence := time.AfterFunc(s.c.o.Timeout, cancel)
	defer silence.Stop()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(int, textproto.MIMEHeader) error {
			silence.Reset(s.c.o.Timeout)
			return nil
		},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peer+blobPath+s.digest, nil)
	if err != nil {
		return perr("request", "peer %s: %v", peer, err)
	}
	last := off + int64(len(p)) - 1
	req.Header.Set("Range", registry.FormatRange(off, last))
	req.Header.Set("Authorization", "Bearer "+s.c.o.Token)
	req.Header.Set(HeaderBlobURL, s.url)
	req.Header.Set(HeaderBlobSize, strconv.FormatInt(s.reg.Size(), 10))
	resp, err := s.c.http.Do(req)
	if err != nil {
		reason := "connect"
		if ctx.Err() != nil {
			reason = "timeout"
		}
		return perr(reason, "peer %s: %v", peer, err)
	}
	defer resp.Body.Close()
	silence.Reset(s.c.o.Timeout)
	if resp.StatusCode != http.StatusPartialContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		reason := "status"
		if resp.StatusCode == http.StatusBadGateway && resp.Header.Get(HeaderUpstreamError) != "" {
			reason = "upstream"
		}
		return perr(reason, "peer %s: HTTP %d: %q", peer, resp.StatusCode, msg)
	}
	cr, err := registry.ParseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		return perr("framing", "peer %s: %v", peer, err)
	}
	first, l, total := cr.First, cr.Last, cr.Total
	if first != off || l != last || total != s.reg.Size() || (resp.ContentLength >= 0 && resp.ContentLength != int64(len(p))) {
		return perr("framing", "peer %s: Content-Range %d-%d/%d, Content-Length %d for %d-%d/%d",
			peer, first, l, total, resp.ContentLength, off, last, s.reg.Size())
	}
	if n, err := io.ReadFull(resp.Body, p); err != nil {
		reason := "framing"
		if ctx.Err() != nil {
			reason = "timeout"
		}
		return perr(reason, "peer %s: body ended after %d of %d bytes: %v", peer, n, len(p), err)
	}
	var extra [1]byte
	if n, _ := resp.Body.Read(extra[:]); n > 0 {
		return perr("framing", "peer %s: body longer than %d bytes", peer, len(p))
	}
	return nil
}

// Evicted is told (by the layer that owns the cache handle) that the cache
// dropped [off, off+n) because it failed a check downstream (a ZFile block CRC,
// the blob digest). The peers that served those chunks are penalised, and the
// chunks are not asked from them again.
func (s *Source) Evicted(off, n int64) {
	if n <= 0 {
		return
	}
	cs := int64(s.c.o.ChunkSize)
	for c := off / cs; c <= (off+n-1)/cs; c++ {
		s.mu.Lock()
		peer, ok := s.served[c]
		if ok {
			delete(s.served, c)
			s.avoid[c] = peer
		}
		s.mu.Unlock()
		if ok {
			s.c.o.Metrics.peerError("bad-data")
			s.c.o.Peers.Penalise(peer, fmt.Sprintf("blob %s chunk %d failed its check", s.digest, c))
		}
	}
}
