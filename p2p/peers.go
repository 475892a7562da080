package p2p

import (
	"bufio"
	"bytes"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// maxPeers bounds a peer list (a file is read whole; a fleet is ranked per chunk).
const maxPeers = 10000

// ParsePeers parses a peer list: one peer a line ("host:port", or an http:// or
// https:// URL with no path), '#' starts a comment, blank lines are ignored. It
// returns the peers as base URLs ("http://host:port"), sorted, without duplicates.
func ParsePeers(data []byte) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 4096)
	for line := 1; sc.Scan(); line++ {
		s := sc.Text()
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = s[:i]
		}
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := NormalizePeer(s)
		if err != nil {
			return nil, fmt.Errorf("peer list line %d: %w", line, err)
		}
		if out = append(out, p); len(out) > maxPeers {
			return nil, fmt.Errorf("peer list: more than %d peers", maxPeers)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("peer list: %w", err)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// NormalizePeer turns "host:port" or "scheme://host:port" into "scheme://host:port".
func NormalizePeer(s string) (string, error) {
	a := s
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	u, err := url.Parse(a)
	if err != nil {
		return "", fmt.Errorf("peer %q: %v", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("peer %q: want host:port or http(s)://host:port", s)
	}
	return u.Scheme + "://" + strings.ToLower(u.Host), nil
}

// PeerSet is the fleet as this node sees it: a static list or a file re-read
// when it changes (checked at most every reloadEvery), minus peers penalised for
// failing. Self is this node's own address, ranked like any peer (a chunk it owns
// is fetched from the registry).
type PeerSet struct {
	self   string
	static []string
	file   string
	lg     *zap.Logger

	mu         sync.Mutex
	peers      []string
	fileStamp  string // size and mtime of the file last read
	checked    time.Time
	penalised  map[string]time.Time // peer → until
	penalty    time.Duration
	reloadTime time.Duration
}

const (
	defaultPenalty = 30 * time.Second
	reloadEvery    = time.Second
)

// NewPeerSet makes a peer set from a static list and/or a file (both may be
// given: the union is used). self is this node's advertised address (may be "").
func NewPeerSet(self string, static []string, file string, lg *zap.Logger) (*PeerSet, error) {
	if lg == nil {
		lg = zap.L()
	}
	s := &PeerSet{file: file, lg: lg, penalised: map[string]time.Time{}, penalty: defaultPenalty, reloadTime: reloadEvery}
	if self != "" {
		p, err := NormalizePeer(self)
		if err != nil {
			return nil, fmt.Errorf("p2p self address: %w", err)
		}
		s.self = p
	}
	for _, p := range static {
		n, err := NormalizePeer(p)
		if err != nil {
			return nil, err
		}
		s.static = append(s.static, n)
	}
	s.peers = merge(s.static, nil)
	if file != "" {
		if err := s.reload(true); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func merge(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// reload re-reads the file when its size or mtime changed. At start (first) an
// unreadable file is an error; later it keeps the last good list.
func (s *PeerSet) reload(first bool) error {
	fi, err := os.Stat(s.file)
	if err != nil {
		if first {
			return fmt.Errorf("p2p peers file: %w", err)
		}
		s.lg.Warn("p2p peers file unreadable; keeping the last list", zap.Error(err))
		return nil
	}
	stamp := fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
	s.mu.Lock()
	same := stamp == s.fileStamp
	s.mu.Unlock()
	if same {
		return nil
	}
	data, err := os.ReadFile(s.file)
	var peers []string
	if err == nil {
		peers, err = ParsePeers(data)
	}
	if err != nil {
		if first {
			return fmt.Errorf("p2p peers file %s: %w", s.file, err)
		}
		s.lg.Warn("p2p peers file invalid; keeping the last list", zap.String("file", s.file), zap.Error(err))
		return nil
	}
	s.mu.Lock()
	s.peers = merge(s.static, peers)
	s.fileStamp = stamp
	n := len(s.peers)
	s.mu.Unlock()
	s.lg.Info("p2p peers loaded", zap.String("file", s.file), zap.Int("peers", n))
	return nil
}

// Self is this node's normalised address ("" if none).
func (s *PeerSet) Self() string { return s.self }

// Peers returns the current list (self included if listed).
func (s *PeerSet) Peers() []string {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.peers)
}

func (s *PeerSet) refresh() {
	if s.file == "" {
		return
	}
	s.mu.Lock()
	due := time.Since(s.checked) >= s.reloadTime
	if due {
		s.checked = time.Now()
	}
	s.mu.Unlock()
	if due {
		s.reload(false)
	}
}

// Ranked returns the peers in rendezvous order for key (highest score first):
// every node with the same list computes the same order, so one peer, the
// owner, is asked for a chunk by all. Penalised peers are left out; self is
// always kept, in its place, so callers know when this node owns the key.
func (s *PeerSet) Ranked(key string) []string {
	s.refresh()
	now := time.Now()
	s.mu.Lock()
	cand := make([]string, 0, len(s.peers)+1)
	selfListed := false
	for _, p := range s.peers {
		if p == s.self {
			selfListed = true
		} else if until, ok := s.penalised[p]; ok {
			if now.Before(until) {
				continue
			}
			delete(s.penalised, p)
		}
		cand = append(cand, p)
	}
	s.mu.Unlock()
	if s.self != "" && !selfListed {
		cand = append(cand, s.self)
	}
	return rank(cand, key)
}

// Penalise skips peer for the penalty period.
func (s *PeerSet) Penalise(peer, why string) {
	if peer == s.self {
		return
	}
	s.mu.Lock()
	s.penalised[peer] = time.Now().Add(s.penalty)
	s.mu.Unlock()
	s.lg.Info("p2p peer penalised", zap.String("peer", peer), zap.String("why", why), zap.Duration("for", s.penalty))
}

// Penalised reports whether peer is being skipped.
func (s *PeerSet) Penalised(peer string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.penalised[peer]
	return ok && time.Now().Before(until)
}

// rank sorts peers by descending rendezvous score for key (ties by name).
func rank(peers []string, key string) []string {
	type scored struct {
		p string
		s uint64
	}
	sc := make([]scored, len(peers))
	for i, p := range peers {
		sc[i] = scored{p, score(p, key)}
	}
	slices.SortFunc(sc, func(a, b scored) int {
		switch {
		case a.s > b.s:
			return -1
		case a.s < b.s:
			return 1
		}
		return strings.Compare(a.p, b.p)
	})
	out := make([]string, len(sc))
	for i := range sc {
		out[i] = sc[i].p
	}
	return out
}

// score is the rendezvous (highest random weight) hash of a peer and a key:
// FNV-1a 64 then the splitmix64 finaliser, stable across processes and versions.
func score(peer, key string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(peer); i++ {
		h = (h ^ uint64(peer[i])) * 1099511628211
	}
	h = (h ^ 0xff) * 1099511628211
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// Rank is the rendezvous order of peers for key (exported for the simulator).
func Rank(peers []string, key string) []string { return rank(peers, key) }

// Upstream is whom self asks for a chunk with this ranking (see upstream;
// exported for the simulator).
func Upstream(ranked []string, self string, fanOut int) []string {
	return upstream(ranked, self, fanOut)
}

// ChunkKey is the rendezvous key of a blob chunk.
func ChunkKey(digest string, chunk int64) string { return digest + "#" + strconv.FormatInt(chunk, 10) }
