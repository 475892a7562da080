package registry

import (
	"os"
	"strings"
	"testing"
	"time"
)

func FuzzParseCredentialFile(f *testing.F) {
	f.Add([]byte(`{"auths": {"hub.docker.com": {"username":"u","password":"p"}, "hub.docker.com/hello/world": {"auth":"dXNlcm5hbWU6cGFzc3dvcmQK"}}}`))
	f.Add([]byte(`{"auths": {}}`))
	f.Add([]byte(`{"x": [1, {"auths": 2}], "auths": {"h": {"auth": ""}}}`))
	f.Add([]byte(`{"auths": {"h": {"auth": "!"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cf, err := ParseCredentialFile("fuzz.json", data)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.json") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, e := range cf.Entries {
			c, ok := cf.Lookup([]string{e.Key})
			if !ok {
				t.Fatalf("entry %q not found by its own key", e.Key)
			}
			_ = c
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 10-19/642560", "bytes 5-9/*", "bytes */10", "bytes 9-5/10", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := ParseContentRange(s)
		if err != nil {
			return
		}
		if cr.First < 0 || cr.Last < cr.First || (cr.Total >= 0 && cr.Last >= cr.Total) || cr.Total < -1 {
			t.Fatalf("%q: accepted inconsistent %+v", s, cr)
		}
	})
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Thu, 01 Jan 2026 00:00:05 GMT", "x", "99999999999999999999"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		if d, ok := parseRetryAfter(s, now); ok && d < 0 {
			t.Fatalf("%q: negative %v", s, d)
		}
	})
}

func FuzzSplitBlobURL(f *testing.F) {
	f.Add("https://registry-1.docker.io/v2/library/redis/blobs/" + helloLayer)
	f.Add("http://127.0.0.1:5000/v2/a/b/c/blobs/sha256:" + strings.Repeat("0", 64) + "?x=1")
	f.Add("http://h/v2//blobs/x")
	f.Add("ftp://h/v2/r/blobs/x?sig=SECRET")
	f.Add("http://h/v2/r/blobs/sha256:12?X-Amz-Signature=SECRET")
	f.Fuzz(func(t *testing.T, s string) {
		host, repo, digest, err := splitBlobURL(s)
		if err != nil {
			// The query (a signature) never reaches the message.
			if before, query, ok := strings.Cut(s, "?"); ok && strings.Contains(query, "SECRET") &&
				!strings.Contains(before, "SECRET") && strings.Contains(err.Error(), "SECRET") {
				t.Fatalf("error leaks the query %q: %v", query, err)
			}
			return
		}
		if host == "" || repo == "" || !strings.HasPrefix(digest, "sha256:") {
			t.Fatalf("%q: accepted %q %q %q", s, host, repo, digest)
		}
	})
}

// The golden layout's index.json must not parse as a credential file with
// entries: a sanity seed from real data.
func TestCredentialFileRejectsOtherJSON(t *testing.T) {
	data, err := os.ReadFile(goldenLayout + "/index.json")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := ParseCredentialFile("index.json", data)
	if err != nil || len(cf.Entries) != 0 {
		t.Fatalf("%v %+v", err, cf)
	}
}
