package p2p

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestRendezvous: owners are spread evenly, and removing a peer moves only the
// chunks it owned.
func TestRendezvous(t *testing.T) {
	var peers []string
	for i := range 10 {
		peers = append(peers, fmt.Sprintf("http://10.0.0.%d:19150", i+1))
	}
	owner := map[string]string{}
	count := map[string]int{}
	const keys = 20000
	for k := range keys {
		key := fmt.Sprintf("sha256:abc#%d", k)
		o := rank(peers, key)[0]
		owner[key] = o
		count[o]++
	}
	for p, n := range count {
		if n < keys/10*8/10 || n > keys/10*12/10 {
			t.Errorf("peer %s owns %d of %d keys; want about %d", p, n, keys, keys/10)
		}
	}
	gone := peers[3]
	rest := slices.Delete(slices.Clone(peers), 3, 4)
	moved := 0
	for key, o := range owner {
		n := rank(rest, key)[0]
		if o != gone && n != o {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d keys not owned by the removed peer changed owner", moved)
	}
}

func TestPeerFileReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "peers")
	if err := os.WriteFile(file, []byte("# fleet\n10.0.0.1:19150\n10.0.0.2:19150 # b\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := NewPeerSet("10.0.0.1:19150", []string{"https://10.0.0.9:19150"}, file, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.reloadTime = 0
	want := []string{"http://10.0.0.1:19150", "http://10.0.0.2:19150", "https://10.0.0.9:19150"}
	if got := s.Peers(); !slices.Equal(got, want) {
		t.Fatalf("peers %v, want %v", got, want)
	}
	time.Sleep(10 * time.Millisecond) // a new mtime
	if err := os.WriteFile(file, []byte("10.0.0.3:19150\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want = []string{"http://10.0.0.3:19150", "https://10.0.0.9:19150"}
	if got := s.Peers(); !slices.Equal(got, want) {
		t.Fatalf("after rewrite: peers %v, want %v", got, want)
	}
	// A broken file keeps the last good list.
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(file, []byte("not a peer/path\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := s.Peers(); !slices.Equal(got, want) {
		t.Fatalf("after a bad rewrite: peers %v, want %v", got, want)
	}
	// Self stays in the ranking even when unlisted; penalised peers drop out.
	s.Penalise("http://10.0.0.3:19150", "test")
	r := s.Ranked("k")
	if !slices.Contains(r, "http://10.0.0.1:19150") || slices.Contains(r, "http://10.0.0.3:19150") {
		t.Errorf("ranked %v: want self in, the penalised peer out", r)
	}
}

func TestParsePeersErrors(t *testing.T) {
	for _, in := range []string{"host", "ftp://h:1", "h:1/path", "http://u@h:1", "h:1?x=1", strings.Repeat("a", 5000)} {
		if _, err := ParsePeers([]byte(in)); err == nil {
			t.Errorf("ParsePeers(%.40q): no error", in)
		}
	}
}

func FuzzParsePeers(f *testing.F) {
	f.Add([]byte("a:1\n# c\nhttps://b:2\n"))
	f.Add([]byte("http://[::1]:80\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		peers, err := ParsePeers(data)
		if err != nil {
			return
		}
		for _, p := range peers {
			again, err := NormalizePeer(p)
			if err != nil || again != p {
				t.Fatalf("peer %q does not normalise to itself: %q, %v", p, again, err)
			}
		}
	})
}

// Content-Range answers are parsed by registry.ParseContentRange (its own fuzz target).
func FuzzRangeHeaders(f *testing.F) {
	f.Add("bytes=0-0")
	f.Add("bytes=5-10")
	f.Fuzz(func(t *testing.T, rng string) {
		if a, b, ok := parseRange(rng); ok {
			if a < 0 || b < a || !strings.HasPrefix(rng, "bytes=") {
				t.Fatalf("parseRange(%q) = %d, %d", rng, a, b)
			}
		}
	})
}

func TestUpstream(t *testing.T) {
	r := []string{"a", "b", "c", "d", "e", "f", "g"}
	for _, tc := range []struct {
		self string
		fan  int
		want []string
	}{
		{"a", 2, nil},
		{"b", 2, []string{"a"}},
		{"e", 2, []string{"b", "a"}},
		{"g", 2, []string{"c", "a"}},
		{"g", 8, []string{"a"}},
		{"x", 2, []string{"d", "b", "a"}}, // not listed: below the last
	} {
		if got := upstream(r, tc.self, tc.fan); !slices.Equal(got, tc.want) {
			t.Errorf("upstream(%s, fan %d) = %v, want %v", tc.self, tc.fan, got, tc.want)
		}
	}
}
