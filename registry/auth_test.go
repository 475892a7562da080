package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/obd-project/obd/registry/registrytest"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func credFileJSON(key, user, pass string, useAuth bool) string {
	if useAuth {
		a := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		return fmt.Sprintf(`{"auths": {"other.example": {"auth": "eDp5"}, %q: {"auth": %q}}}`, key, a)
	}
	return fmt.Sprintf(`{"auths": {%q: {"username": %q, "password": %q}}}`, key, user, pass)
}

func TestAuthModes(t *testing.T) {
	for _, mode := range []string{"basic", "token"} {
		t.Run(mode, func(t *testing.T) {
			opt := registrytest.WithBasicAuth("alice", "s3cret")
			if mode == "token" {
				opt = registrytest.WithTokenAuth("alice", "s3cret", 0)
			}
			reg := registrytest.New(t, opt)
			reg.PushLayout(t, goldenLayout, "library/hello-world")
			want := goldenBlob(t)
			ref := reg.Ref("library/hello-world:amd64-converted")
			dir := t.TempDir()

			read := func(t *testing.T, c *Client) error {
				t.Helper()
				im, err := c.Resolve(context.Background(), ref)
				if err != nil {
					return err
				}
				b, err := c.OpenBlob(context.Background(), im.BlobURL(im.Layers[0].Digest), im.Layers[0].Size)
				if err != nil {
					return err
				}
				defer b.Close()
				checkRanges(t, b, want, 9, 5)
				return nil
			}

			// Credential file: host, host/ns and host/ns/repo keys; auth and
			// username/password forms.
			for i, key := range []string{reg.Host, reg.Host + "/library", reg.Host + "/library/hello-world"} {
				path := filepath.Join(dir, fmt.Sprintf("cred%d.json", i))
				writeFile(t, path, credFileJSON(key, "alice", "s3cret", i%2 == 0))
				if err := read(t, testClient(t, Options{CredentialFile: path})); err != nil {
					t.Errorf("credential file key %s: %v", key, err)
				}
			}
			// A longer key than the repository path does not match.
			path := filepath.Join(dir, "nomatch.json")
			writeFile(t, path, credFileJSON(reg.Host+"/library/hello-world/x", "alice", "s3cret", false))
			if err := read(t, testClient(t, Options{CredentialFile: path})); !errors.Is(err, ErrUnauthorized) {
				t.Errorf("no matching key: %v, want ErrUnauthorized", err)
			}

			// docker config.json through authn.DefaultKeychain.
			dc := filepath.Join(dir, "docker")
			os.MkdirAll(dc, 0o700)
			writeFile(t, filepath.Join(dc, "config.json"), fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`,
				reg.Host, base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))))
			t.Setenv("DOCKER_CONFIG", dc)
			c, err := NewClient(Options{}) // default keychain
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := read(t, c); err != nil {
				t.Errorf("docker config: %v", err)
			}

			// Wrong password: a clear, bounded failure.
			writeFile(t, path, credFileJSON(reg.Host, "alice", "wrong", true))
			var tokensBefore int64
			if reg.Tokens != nil {
				tokensBefore = reg.Tokens.Requests()
			}
			err = read(t, testClient(t, Options{CredentialFile: path, Keychain: anonymousKeychain{}}))
			if !errors.Is(err, ErrUnauthorized) {
				t.Errorf("wrong password: %v, want ErrUnauthorized", err)
			}
			if strings.Contains(fmt.Sprint(err), "wrong") {
				t.Errorf("error leaks the password: %v", err)
			}
			if reg.Tokens != nil {
				if n := reg.Tokens.Requests() - tokensBefore; n > 4 {
					t.Errorf("%d token requests for one failed resolve", n)
				}
			}
		})
	}
}

// Credentials rotate and tokens expire while a blob is open: the reader gets a
// fresh token with the credentials now in the file.
func TestAuthRotation(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithTokenAuth("alice", "one", 0))
	reg.PushLayout(t, goldenLayout, "hello-world")
	want := goldenBlob(t)
	path := filepath.Join(t.TempDir(), "cred.json")
	writeFile(t, path, credFileJSON(reg.Host, "alice", "one", false))
	c := testClient(t, Options{CredentialFile: path})
	b, err := c.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkRanges(t, b, want, 1, 3)
	reg.SetCredentials("alice", "two")
	writeFile(t, path, credFileJSON(reg.Host, "alice", "two", true))
	reg.Tokens.RevokeAll()
	checkRanges(t, b, want, 2, 3)

	// Revoked again, and now the file is wrong: reads fail without looping.
	reg.SetCredentials("alice", "three")
	reg.Tokens.RevokeAll()
	before := reg.Tokens.Requests()
	start := time.Now()
	_, err = b.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("stale credentials: %v", err)
	}
	if n := reg.Tokens.Requests() - before; n > 4 {
		t.Errorf("%d token requests for one read", n)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("auth failure took %v", d)
	}
}

func TestCredentialFile(t *testing.T) {
	cf, err := ParseCredentialFile("t", []byte(`{"other": 1, "auths": {
		"hub.docker.com": {"username": "u", "password": "p"},
		"hub.docker.com/hello/world": {"auth": "dXNlcm5hbWU6cGFzc3dvcmQK"},
		"h/ns": {"auth": "YTpiOmM="},
		"h": {"username": "root", "password": "x"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host, repo string
		user, pass string
		ok         bool
	}{
		{"hub.docker.com", "hello/world", "u", "p", true},      // first key in document order wins
		{"h", "ns/repo", "a", "b:c", true},                     // split at the first ':'
		{"h", "other/repo", "root", "x", true},                 // host key
		{"nothere", "ns/repo", "", "", false},                  // no match
		{"hub.docker.com.evil", "hello/world", "", "", false},  // whole-key match only
		{"registry-1.docker.io", "hello/world", "", "", false}, // not a Docker Hub alias of hub.docker.com
	} {
		c, ok := cf.Lookup(CredentialCandidates(tc.host, tc.repo))
		if ok != tc.ok || c.Username != tc.user || c.Password != tc.pass {
			t.Errorf("%s/%s: %+v %v", tc.host, tc.repo, c, ok)
		}
	}
	cf2, _ := ParseCredentialFile("t", []byte(`{"auths": {"hub.docker.com/hello/world": {"auth": "dXNlcm5hbWU6cGFzc3dvcmQK"}}}`))
	if c, _ := cf2.Lookup([]string{"hub.docker.com/hello/world"}); c.Username != "username" || c.Password != "password\n" {
		t.Errorf("spec example: %+v", c)
	}
	if got := CredentialCandidates("docker.io", "library/redis"); !contains(got, "registry-1.docker.io/library/redis") || !contains(got, "docker.io") {
		t.Errorf("docker hub aliases: %v", got)
	}
	for _, bad := range []string{``, `[]`, `{"auths": []}`, `{"auths": {"h": {"auth": "!!"}}}`,
		`{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}`, `{"auths": {"h": 5}}`, `{} {}`, `{"auths": {"h": {}}`} {
		if _, err := ParseCredentialFile("bad.json", []byte(bad)); err == nil || !strings.Contains(err.Error(), "bad.json") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	// The keychain: missing file = anonymous; broken file = error.
	kc := CredentialFileKeychain(filepath.Join(t.TempDir(), "absent.json"))
	if a, err := kc.Resolve(fakeResource{"h", "h/ns/repo"}); err != nil || a != authn.Anonymous {
		t.Errorf("absent file: %v %v", a, err)
	}
	p := filepath.Join(t.TempDir(), "broken.json")
	writeFile(t, p, `{"auths": {`)
	if _, err := CredentialFileKeychain(p).Resolve(fakeResource{"h", "h/ns/repo"}); err == nil {
		t.Error("broken file accepted")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type fakeResource struct{ reg, full string }

func (f fakeResource) String() string      { return f.full }
func (f fakeResource) RegistryStr() string { return f.reg }
