package registrytest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"math/rand/v2"
)

// Fault is what the proxy does to one request.
type Fault int

const (
	None              Fault = iota // forward unchanged
	Status500                      // answer 500 without forwarding
	Status502                      // answer 502 without forwarding
	Status503                      // answer 503 without forwarding
	TooManyRequests                // answer 429 with Retry-After (FaultProxy.RetryAfter)
	ResetMidBody                   // send headers and half the body, then reset the connection
	TruncateBody                   // send headers and half the body, then close cleanly
	FlipBit                        // flip one bit in the middle of the body (framing intact)
	WrongContentRange              // shift the Content-Range by one byte, body unchanged
	LongBody                       // append 16 bytes to the body (Content-Length matches it)
	ShortBody                      // drop the second half of the body (Content-Length matches it)
	IgnoreRange                    // forward without Range: 200 with the whole blob
	ChangedBlob                    // invert every body byte (another blob of the same size)
)

var faultNames = [...]string{"None", "Status500", "Status502", "Status503", "TooManyRequests", "ResetMidBody", "TruncateBody",
	"FlipBit", "WrongContentRange", "LongBody", "ShortBody", "IgnoreRange", "ChangedBlob"}

func (f Fault) String() string {
	if int(f) < len(faultNames) {
		return faultNames[f]
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// Plan picks the fault for the n-th (1-based) matching request.
type Plan func(n int64, r *http.Request) Fault

// Always applies f to every matching request.
func Always(f Fault) Plan { return func(int64, *http.Request) Fault { return f } }

// Sequence applies fs to the first len(fs) matching requests, then None.
func Sequence(fs ...Fault) Plan {
	return func(n int64, _ *http.Request) Fault {
		if n <= int64(len(fs)) {
			return fs[n-1]
		}
		return None
	}
}

// Random applies one of fs, chosen uniformly, to a fraction rate of requests,
// deterministically for a seed.
func Random(seed uint64, rate float64, fs ...Fault) Plan {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, seed+1))
	return func(int64, *http.Request) Fault {
		mu.Lock()
		defer mu.Unlock()
		if len(fs) == 0 || rng.Float64() >= rate {
			return None
		}
		return fs[rng.IntN(len(fs))]
	}
}

// FaultProxy is an HTTP proxy in front of a server (a Registry's URL) that injects
// faults into matching requests (by default blob GETs) and counts them.
type FaultProxy struct {
	URL, Host string

	target  string
	client  *http.Client
	mu      sync.Mutex
	plan    Plan
	latency time.Duration
	match   func(*http.Request) bool
	// RetryAfter is the Retry-After value sent with 429 (default "1").
	retryAfter string
	etags      bool

	matched atomic.Int64
	total   atomic.Int64
	faults  sync.Map // Fault → *atomic.Int64
}

// NewFaultProxy starts a proxy to target (e.g. Registry.URL) on 127.0.0.1.
func NewFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	p := &FaultProxy{
		target:     strings.TrimSuffix(target, "/"),
		retryAfter: "1",
		match:      isBlobGet,
		// No keep-alive towards the target, so closing the proxy leaves no idle
		// connections behind (goroutine-leak tests count them).
		client: &http.Client{
			Transport:     &http.Transport{DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	srv := httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	p.Host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func isBlobGet(r *http.Request) bool {
	_, _, ok := blobPath(r.URL.Path)
	return ok && r.Method == http.MethodGet
}

// SetPlan sets the fault plan (nil: no faults) and resets the counters.
func (p *FaultProxy) SetPlan(plan Plan) {
	p.mu.Lock()
	p.plan = plan
	p.mu.Unlock()
	p.matched.Store(0)
	p.total.Store(0)
	p.faults.Range(func(k, _ any) bool { p.faults.Delete(k); return true })
}

// SetLatency delays every request (matching or not) by d.
func (p *FaultProxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// SetRetryAfter sets the Retry-After header sent with 429 ("" to omit it).
func (p *FaultProxy) SetRetryAfter(v string) {
	p.mu.Lock()
	p.retryAfter = v
	p.mu.Unlock()
}

// SetMatch chooses which requests faults apply to and are counted.
func (p *FaultProxy) SetMatch(m func(*http.Request) bool) {
	p.mu.Lock()
	p.match = m
	p.mu.Unlock()
}

// SetETags makes the proxy add an ETag to forwarded answers ("orig"), and a
// different one to ChangedBlob answers, as object stores do.
func (p *FaultProxy) SetETags(on bool) {
	p.mu.Lock()
	p.etags = on
	p.mu.Unlock()
}

// Matched counts matching requests since the last SetPlan; Total counts all.
func (p *FaultProxy) Matched() int64 { return p.matched.Load() }
func (p *FaultProxy) Total() int64   { return p.total.Load() }

// Injected counts how often fault f was applied since the last SetPlan.
func (p *FaultProxy) Injected(f Fault) int64 {
	if v, ok := p.faults.Load(f); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func (p *FaultProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.total.Add(1)
	p.mu.Lock()
	plan, latency, match, retryAfter, etags := p.plan, p.latency, p.match, p.retryAfter, p.etags
	p.mu.Unlock()
	f := None
	if match(r) {
		n := p.matched.Add(1)
		if plan != nil {
			f = plan(n, r)
		}
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if f != None {
		v, _ := p.faults.LoadOrStore(f, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	switch f {
	case Status500, Status502, Status503:
		code := map[Fault]int{Status500: 500, Status502: 502, Status503: 503}[f]
		http.Error(w, "injected fault", code)
		return
	case TooManyRequests:
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		http.Error(w, "injected 429", http.StatusTooManyRequests)
		return
	}

	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	if f == IgnoreRange {
		out.Header.Del("Range")
	}
	resp, err := p.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	h := resp.Header.Clone()
	if etags && resp.StatusCode/100 == 2 {
		h.Set("ETag", `"orig"`)
	}
	ok := resp.StatusCode/100 == 2 && len(body) > 0
	switch {
	case !ok:
	case f == FlipBit:
		body[len(body)/2] ^= 0x10
	case f == ChangedBlob:
		for i := range body {
			body[i] = ^body[i]
		}
		if etags {
			h.Set("ETag", `"changed"`)
		}
	case f == WrongContentRange:
		var first, last, total int64
		if _, err := fmt.Sscanf(h.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err == nil {
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first+1, last+1, total))
		}
	case f == LongBody:
		body = append(body, bytes.Repeat([]byte{0xAA}, 16)...)
	case f == ShortBody:
		body = body[:len(body)/2]
	case f == ResetMidBody || f == TruncateBody:
		p.cut(w, resp.StatusCode, h, body, f == ResetMidBody)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	for k, v := range h {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(body)
}

// cut writes the response head with the full Content-Length but only half the
// body, then closes the connection (with an RST when reset is set).
func (p *FaultProxy) cut(w http.ResponseWriter, code int, h http.Header, body []byte, reset bool) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "registrytest: cannot hijack", http.StatusInternalServerError)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Transfer-Encoding")
	h.Write(buf)
	buf.WriteString("\r\n")
	buf.Write(body[:len(body)/2])
	buf.Flush()
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		tc.SetLinger(0)
	}
}
