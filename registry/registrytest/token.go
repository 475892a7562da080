package registrytest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TokenServer issues bearer tokens for Basic credentials, like Docker Hub's
// auth.docker.io: GET <URL>?service=...&scope=repository:<repo>:<actions>.
// It is served at /token on the registry's own host:port, because
// go-containerregistry (rightly) refuses token realms on other private or
// loopback addresses.
type TokenServer struct {
	URL string // realm: <registry URL>/token

	reg      *Registry
	ttl      time.Duration
	mu       sync.Mutex
	tokens   map[string]token
	requests atomic.Int64
	denied   atomic.Int64
}

type token struct {
	scopes  []string
	expires time.Time
}

func newTokenServer(reg *Registry, ttl time.Duration) *TokenServer {
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	return &TokenServer{reg: reg, ttl: ttl, tokens: map[string]token{}}
}

// Requests counts token requests; Denied those refused for bad credentials.
func (ts *TokenServer) Requests() int64 { return ts.requests.Load() }
func (ts *TokenServer) Denied() int64   { return ts.denied.Load() }

// RevokeAll invalidates every issued token (as if they expired).
func (ts *TokenServer) RevokeAll() {
	ts.mu.Lock()
	ts.tokens = map[string]token{}
	ts.mu.Unlock()
}

func (ts *TokenServer) serve(w http.ResponseWriter, req *http.Request) {
	ts.requests.Add(1)
	if !ts.reg.checkBasic(req) {
		ts.denied.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="registrytest-token"`)
		http.Error(w, `{"details":"incorrect username or password"}`, http.StatusUnauthorized)
		return
	}
	var b [16]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	ts.mu.Lock()
	ts.tokens[tok] = token{scopes: req.URL.Query()["scope"], expires: time.Now().Add(ts.ttl)}
	ts.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": int(ts.ttl.Seconds())})
}

// valid reports whether tok is live and grants access to repo ("" = any, /v2/).
func (ts *TokenServer) valid(tok, repo string) bool {
	if tok == "" {
		return false
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, ok := ts.tokens[tok]
	if !ok || time.Now().After(t.expires) {
		return false
	}
	if repo == "" {
		return true
	}
	for _, s := range t.scopes {
		for _, one := range strings.Fields(s) {
			if strings.HasPrefix(one, "repository:"+repo+":") {
				return true
			}
		}
	}
	return false
}
