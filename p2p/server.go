package p2p

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/registry"
	"go.uber.org/zap"
)

// Limits of the peer server.
const (
	maxServeRange     = cache.MaxRefillSize // one chunk at most (the largest refill unit)
	defaultMaxServing = 32
	maxOpenBlobs      = 64
	defaultHeartbeat  = 2 * time.Second
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Cache is this node's extent cache (the one its own reads use, so that a
	// chunk fetched for a peer and for a local reader is fetched once).
	Cache *cache.Cache
	// Open opens the source of a blob by digest, URL and size, without probing:
	// Client.Source over registry.Client.LazyBlob, so that a relay fetches a
	// chunk from its parent in the chunk's tree and the owner from the registry.
	Open  func(digest, url string, size int64) (cache.Source, error)
	Token string
	// MaxServing bounds concurrent requests; more wait (default 32).
	MaxServing int
	// Heartbeat is how often a request waiting for its chunk is told (102
	// Processing) that this node is alive and working on it (default 2 s,
	// well below the requesters' silence timeout, ClientOptions.Timeout).
	Heartbeat time.Duration
	Metrics   *Metrics
	Logger    *zap.Logger
}

// Server serves blob ranges from the local cache to peers, fetching a missing
// chunk from the registry once (the cache's single-flight) and caching it. It
// serves only bytes that pass the cache's page checks. It is an http.Handler.
type Server struct {
	o   ServerOptions
	sem chan struct{}

	mu    sync.Mutex
	open  map[string]*served // by digest
	clock uint64
}

type served struct {
	blob *cache.Blob
	src  cache.Source
	refs int
	used uint64
	gone bool // dropped from the map: close at refs 0
}

// NewServer checks o and makes a Server.
func NewServer(o ServerOptions) (*Server, error) {
	if o.Cache == nil || o.Open == nil {
		return nil, errors.New("p2p: server needs a cache and a registry opener")
	}
	if o.Token == "" {
		return nil, errors.New("p2p: peer mode needs a token")
	}
	if o.MaxServing <= 0 {
		o.MaxServing = defaultMaxServing
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = defaultHeartbeat
	}
	if o.Logger == nil {
		o.Logger = zap.L()
	}
	return &Server{o: o, sem: make(chan struct{}, o.MaxServing), open: map[string]*served{}}, nil
}

// Close closes the blobs the server holds open.
func (s *Server) Close() {
	var idle []*served
	s.mu.Lock()
	for d, h := range s.open {
		delete(s.open, d)
		h.gone = true
		if h.refs == 0 {
			idle = append(idle, h)
		}
	}
	s.mu.Unlock()
	// Outside s.mu: closing a cache handle waits for its running fills.
	for _, h := range idle {
		closeServed(h)
	}
}

func closeServed(h *served) {
	h.blob.Close()
	if c, ok := h.src.(io.Closer); ok {
		c.Close()
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		http.Error(w, "bad or missing token", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	digest, ok := strings.CutPrefix(r.URL.Path, blobPath)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if _, err := v1.NewHash(digest); err != nil {
		http.Error(w, fmt.Sprintf("digest %q: %v", digest, err), http.StatusBadRequest)
		return
	}
	url := r.Header.Get(HeaderBlobURL)
	if !strings.HasSuffix(url, "/blobs/"+digest) {
		http.Error(w, HeaderBlobURL+" does not name the blob "+digest, http.StatusBadRequest)
		return
	}
	size, err := parseUint(r.Header.Get(HeaderBlobSize))
	if err != nil || size <= 0 {
		http.Error(w, "bad "+HeaderBlobSize, http.StatusBadRequest)
		return
	}
	if max := s.o.Cache.MaxBlobSize(); size > max {
		s.o.Logger.Warn("p2p serve refused: blob size above the limit", zap.String("blob", digest),
			zap.Int64("size", size), zap.Int64("limit", max))
		http.Error(w, fmt.Sprintf("%s %d exceeds the limit %d", HeaderBlobSize, size, max), http.StatusBadRequest)
		return
	}
	first, last, ok := parseRange(r.Header.Get("Range"))
	if !ok || last >= size || last-first+1 > maxServeRange {
		http.Error(w, fmt.Sprintf("want one range bytes=<first>-<last> of at most %d bytes inside the blob", maxServeRange),
			http.StatusRequestedRangeNotSatisfiable)
		return
	}
	// While the chunk is on its way (a slot, the blob's open, the fill from the
	// registry or this node's parent), tell the requester this node is at it:
	// it then waits for the owner, however slow the registry, instead of giving
	// up on a timer and fetching the chunk itself (a second registry fetch).
	stopBeat := s.heartbeat(w)
	buf, code, msg := s.fetchRange(r.Context(), digest, url, size, first, last)
	stopBeat()
	if code < 0 {
		return // the requester left
	}
	if code != 0 {
		if code == http.StatusBadGateway {
			w.Header().Set(HeaderUpstreamError, "1")
		}
		http.Error(w, msg, code)
		return
	}
	w.Header().Set("Content-Range", registry.ContentRange{First: first, Last: last, Total: size}.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusPartialContent)
	n, _ := w.Write(buf)
	if s.o.Metrics != nil {
		s.o.Metrics.Uploaded.Add(float64(n))
	}
}

// fetchRange reads [first, last] of the blob through the cache. It returns an
// HTTP status and message on failure, -1 if ctx ended first.
func (s *Server) fetchRange(ctx context.Context, digest, url string, size, first, last int64) ([]byte, int, string) {
	// Wait for a slot rather than refuse: a refused peer would be penalised and
	// go to the registry, which is what peer mode is there to avoid. The
	// requester's timeout bounds the wait.
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	case <-ctx.Done():
		return nil, -1, ""
	}
	h, err := s.acquire(digest, url, size)
	if err != nil {
		return nil, http.StatusConflict, err.Error()
	}
	defer s.release(digest, h)
	buf := make([]byte, last-first+1)
	// Exactly the asked chunk: the requester's own cache reads ahead for its
	// reader (chunk by chunk, each from its owner). Peers asking for the same
	// chunk one after another would look like a stream here, and read-ahead
	// would fetch chunks nobody asked for from the registry.
	if n, err := h.blob.ReadAtIntent(context.Background(), blobio.Exact, buf, first); n < len(buf) {
		s.o.Logger.Debug("p2p serve failed", zap.String("blob", digest), zap.Int64("off", first), zap.Error(err))
		return nil, http.StatusBadGateway, fmt.Sprintf("read: %v", err)
	}
	return buf, 0, ""
}

// heartbeat sends a 102 Processing to the requester every Heartbeat until
// stop is called (which returns once no more can be sent, so the handler may
// write its answer).
func (s *Server) heartbeat(w http.ResponseWriter) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(s.o.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				w.WriteHeader(http.StatusProcessing)
			}
		}
	}()
	return func() { close(done); <-exited }
}

func (s *Server) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(s.o.Token)) == 1
}

// acquire returns the open cache handle of digest, opening it (and closing the
// least recently used idle one beyond maxOpenBlobs).
func (s *Server) acquire(digest, url string, size int64) (*served, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock++
	if h := s.open[digest]; h != nil {
		if h.blob.Size() != size {
			return nil, fmt.Errorf("blob %s has size %d, not %d", digest, h.blob.Size(), size)
		}
		h.refs++
		h.used = s.clock
		return h, nil
	}
	src, err := s.o.Open(digest, url, size)
	if err != nil {
		return nil, fmt.Errorf("open %s: %v", digest, err)
	}
	b, err := s.o.Cache.Open(digest, src)
	if err != nil {
		if c, ok := src.(io.Closer); ok {
			c.Close()
		}
		return nil, err
	}
	h := &served{blob: b, src: src, refs: 1, used: s.clock}
	s.open[digest] = h
	if len(s.open) > maxOpenBlobs {
		var lru string
		for d, o := range s.open {
			if o.refs == 0 && (lru == "" || o.used < s.open[lru].used) {
				lru = d
			}
		}
		if lru != "" {
			o := s.open[lru]
			delete(s.open, lru)
			// Closing waits for the blob's running fills (read-ahead): not
			// under s.mu, which every request needs, nor in this request.
			go closeServed(o)
		}
	}
	return h, nil
}

func (s *Server) release(digest string, h *served) {
	s.mu.Lock()
	h.refs--
	last := h.refs == 0 && h.gone
	s.mu.Unlock()
	if last {
		closeServed(h) // outside s.mu: it waits for the blob's running fills
	}
}

// DefaultListen is the peer server's default address.
const DefaultListen = ":19150"

// Serve serves h on addr ("" → DefaultListen), over TLS when certFile and
// keyFile are set, until ctx ends.
func Serve(ctx context.Context, addr, certFile, keyFile string, h http.Handler, lg *zap.Logger) error {
	if addr == "" {
		addr = DefaultListen
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("p2p peer server: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	lg.Info("p2p peer server listening", zap.String("addr", ln.Addr().String()), zap.Bool("tls", certFile != ""))
	if certFile != "" {
		err = srv.ServeTLS(ln, certFile, keyFile)
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
