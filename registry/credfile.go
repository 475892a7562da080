package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// maxCredentialFile bounds what a credential file read may allocate.
const maxCredentialFile = 4 << 20

// Credential is one "auths" entry: a user name and password.
type Credential struct {
	Username, Password string
}

// CredentialFile is the reference's credentialConfig "file" mode document
// ({"auths": {"<prefix>": {"auth": base64(user:pass)} | {"username", "password"}}}),
// with its entries kept in document order because the first matching key wins.
type CredentialFile struct {
	Entries []CredentialEntry
}

// CredentialEntry is one "auths" member.
type CredentialEntry struct {
	Key string // host, host/namespace or host/namespace/repo
	Credential
}

// ParseCredentialFile parses a credential file. name is used in error messages.
func ParseCredentialFile(name string, data []byte) (*CredentialFile, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := expectDelim(dec, '{'); err != nil {
		return nil, fmt.Errorf("credential file %s: top level: %w", name, err)
	}
	cf := &CredentialFile{}
	for dec.More() {
		key, err := stringToken(dec)
		if err != nil {
			return nil, fmt.Errorf("credential file %s: %w", name, err)
		}
		if key != "auths" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, fmt.Errorf("credential file %s: member %q: %w", name, key, err)
			}
			continue
		}
		if err := expectDelim(dec, '{'); err != nil {
			return nil, fmt.Errorf("credential file %s: \"auths\": %w", name, err)
		}
		for dec.More() {
			host, err := stringToken(dec)
			if err != nil {
				return nil, fmt.Errorf("credential file %s: \"auths\": %w", name, err)
			}
			var raw struct {
				Auth     *string `json:"auth"`
				Username string  `json:"username"`
				Password string  `json:"password"`
			}
			if err := dec.Decode(&raw); err != nil {
				return nil, fmt.Errorf("credential file %s: auths[%q]: %w", name, host, err)
			}
			e := CredentialEntry{Key: host}
			if raw.Auth != nil && *raw.Auth != "" {
				dec, err := base64.StdEncoding.DecodeString(*raw.Auth)
				if err != nil {
					return nil, fmt.Errorf("credential file %s: auths[%q].auth: not base64", name, host)
				}
				user, pass, ok := strings.Cut(string(dec), ":")
				if !ok {
					return nil, fmt.Errorf("credential file %s: auths[%q].auth: want base64(user:password), no ':' found", name, host)
				}
				e.Username, e.Password = user, pass
			} else {
				e.Username, e.Password = raw.Username, raw.Password
			}
			cf.Entries = append(cf.Entries, e)
		}
		if _, err := dec.Token(); err != nil { // closing '}' of auths
			return nil, fmt.Errorf("credential file %s: \"auths\": %w", name, err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("credential file %s: %w", name, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("credential file %s: data after the top-level object", name)
	}
	return cf, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %q, found %v", want, tok)
	}
	return nil
}

func stringToken(dec *json.Decoder) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("want an object key, found %v", tok)
	}
	return s, nil
}

// Lookup returns the credential of the first entry, in document order, whose key
// equals one of the candidates (see CredentialCandidates).
func (cf *CredentialFile) Lookup(candidates []string) (Credential, bool) {
	for _, e := range cf.Entries {
		for _, c := range candidates {
			if e.Key == c {
				return e.Credential, true
			}
		}
	}
	return Credential{}, false
}

// CredentialCandidates lists the keys a repository's credentials may be filed
// under, as the reference builds them from a blob URL: the host, then host plus each
// leading run of repository path segments ("h", "h/ns", "h/ns/repo"). Docker Hub's
// host aliases are all candidates, since the blob URL says registry-1.docker.io
// while users write docker.io.
func CredentialCandidates(host, repo string) []string {
	hosts := []string{host}
	switch host {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		hosts = []string{"registry-1.docker.io", "index.docker.io", "docker.io"}
	}
	var out []string
	for _, h := range hosts {
		out = append(out, h)
		prefix := h
		for _, seg := range strings.Split(repo, "/") {
			if seg == "" {
				continue
			}
			prefix += "/" + seg
			out = append(out, prefix)
		}
	}
	return out
}

// CredentialFileKeychain is an authn.Keychain over a credential file. The file is
// consulted at every Authorization call (each token refresh; each request with
// Basic auth) and re-parsed when its size or modification time changed, so
// rotated credentials are picked up. A repository with no matching entry resolves
// to authn.Anonymous so that a following keychain can answer; so does a missing
// file, as in the reference.
func CredentialFileKeychain(path string) authn.Keychain { return &credKeychain{path: path} }

type credKeychain struct {
	path string

	mu      sync.Mutex
	size    int64
	modTime time.Time
	parsed  *CredentialFile
}

func (k *credKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), r)
}

func (k *credKeychain) ResolveContext(_ context.Context, r authn.Resource) (authn.Authenticator, error) {
	reg := r.RegistryStr()
	repo := strings.TrimPrefix(strings.TrimPrefix(r.String(), reg), "/")
	cands := CredentialCandidates(reg, repo)
	_, ok, err := k.lookup(cands)
	if errors.Is(err, fs.ErrNotExist) {
		return authn.Anonymous, nil
	}
	if err != nil || !ok {
		return authn.Anonymous, err
	}
	return &credAuthenticator{k: k, cands: cands}, nil
}

func (k *credKeychain) lookup(cands []string) (Credential, bool, error) {
	cf, err := k.load()
	if err != nil {
		return Credential{}, false, err
	}
	c, ok := cf.Lookup(cands)
	return c, ok, nil
}

// load returns the parsed file, re-reading it only when it changed.
func (k *credKeychain) load() (*CredentialFile, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st, err := os.Stat(k.path)
	if err != nil {
		return nil, fmt.Errorf("credential file: %w", err)
	}
	if k.parsed != nil && st.Size() == k.size && st.ModTime().Equal(k.modTime) {
		return k.parsed, nil
	}
	f, err := os.Open(k.path)
	if err != nil {
		return nil, fmt.Errorf("credential file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCredentialFile+1))
	if err != nil {
		return nil, fmt.Errorf("credential file %s: %w", k.path, err)
	}
	if len(data) > maxCredentialFile {
		return nil, fmt.Errorf("credential file %s: larger than %d bytes", k.path, maxCredentialFile)
	}
	cf, err := ParseCredentialFile(k.path, data)
	if err != nil {
		return nil, err
	}
	k.parsed, k.size, k.modTime = cf, st.Size(), st.ModTime()
	return cf, nil
}

type credAuthenticator struct {
	k     *credKeychain
	cands []string
}

func (a *credAuthenticator) Authorization() (*authn.AuthConfig, error) {
	c, ok, err := a.k.lookup(a.cands)
	if err != nil {
		return nil, err
	}
	if !ok {
		return &authn.AuthConfig{}, nil
	}
	return &authn.AuthConfig{Username: c.Username, Password: c.Password}, nil
}
