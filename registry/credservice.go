package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// CredentialService is the reference's credentialConfig "http", "https" and "uds"
// modes: a local service answers GET <path>?remote_url=<url> (uds: the request
// http://localhost/auth?remote_url=<url> over the unix socket at Path) with
// {"success": true, "data": {"auths": {...}}}, matched like a credential file.
type CredentialService struct {
	Mode    string        // "http", "https" or "uds"
	Path    string        // service URL (http, https) or unix socket path (uds)
	Timeout time.Duration // per request, default 1 s
	// ClientCertPath, ClientKeyPath and ServerCAPath configure https mode's TLS.
	ClientCertPath, ClientKeyPath, ServerCAPath string
}

// Keychain returns an authn.Keychain asking the service. Like the reference it
// asks again whenever credentials are needed (each token refresh), so rotated
// credentials apply; no matching entry resolves to authn.Anonymous.
func (s CredentialService) Keychain() (authn.Keychain, error) {
	if s.Timeout <= 0 {
		s.Timeout = time.Second
	}
	k := &serviceKeychain{s: s, client: &http.Client{Timeout: s.Timeout}}
	switch s.Mode {
	case "http", "https":
		if !strings.HasPrefix(s.Path, s.Mode+"://") {
			return nil, fmt.Errorf("credentialConfig.path %q: want a %s:// URL in %s mode", s.Path, s.Mode, s.Mode)
		}
		if s.Mode == "https" {
			conf := &tls.Config{MinVersion: tls.VersionTLS12}
			if s.ServerCAPath != "" {
				pem, err := os.ReadFile(s.ServerCAPath)
				if err != nil {
					return nil, fmt.Errorf("credentialConfig.server_ca_path: %w", err)
				}
				conf.RootCAs = x509.NewCertPool() // pinned: only this CA
				if !conf.RootCAs.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("credentialConfig.server_ca_path %s: no PEM certificate", s.ServerCAPath)
				}
			}
			if s.ClientCertPath != "" || s.ClientKeyPath != "" {
				cert, err := tls.LoadX509KeyPair(s.ClientCertPath, s.ClientKeyPath)
				if err != nil {
					return nil, fmt.Errorf("credentialConfig client certificate: %w", err)
				}
				conf.Certificates = []tls.Certificate{cert}
			}
			k.client.Transport = &http.Transport{TLSClientConfig: conf}
		}
		k.base = s.Path
	case "uds":
		sock := s.Path
		k.client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		k.base = "http://localhost/auth"
	default:
		return nil, fmt.Errorf("credentialConfig.mode %q: want http, https or uds", s.Mode)
	}
	return k, nil
}

type serviceKeychain struct {
	s      CredentialService
	client *http.Client
	base   string
}

func (k *serviceKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), r)
}

func (k *serviceKeychain) ResolveContext(ctx context.Context, r authn.Resource) (authn.Authenticator, error) {
	reg := r.RegistryStr()
	repo := strings.TrimPrefix(strings.TrimPrefix(r.String(), reg), "/")
	a := &serviceAuthenticator{k: k, host: reg, repo: repo}
	if _, ok, err := a.lookup(ctx); err != nil || !ok {
		return authn.Anonymous, err
	}
	return a, nil
}

type serviceAuthenticator struct {
	k          *serviceKeychain
	host, repo string
}

func (a *serviceAuthenticator) Authorization() (*authn.AuthConfig, error) {
	c, _, err := a.lookup(context.Background())
	if err != nil {
		return nil, err
	}
	return &authn.AuthConfig{Username: c.Username, Password: c.Password}, nil
}

// lookup asks the service about the repository's blob URL prefix (the reference
// sends a full blob URL; the digest does not take part in matching).
func (a *serviceAuthenticator) lookup(ctx context.Context) (Credential, bool, error) {
	host := a.host
	if host == "index.docker.io" || host == "docker.io" {
		host = "registry-1.docker.io"
	}
	remote := "https://" + host + "/v2/" + a.repo + "/blobs/"
	sep := "?"
	if strings.Contains(a.k.base, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.k.base+sep+"remote_url="+remote, nil)
	if err != nil {
		return Credential{}, false, fmt.Errorf("credential service: %w", err)
	}
	resp, err := a.k.client.Do(req)
	if err != nil {
		return Credential{}, false, fmt.Errorf("credential service (%s): %w", a.k.s.Mode, redactErr(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Credential{}, false, fmt.Errorf("credential service (%s): HTTP %d", a.k.s.Mode, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxCredentialFile+1))
	if err != nil || len(data) > maxCredentialFile {
		return Credential{}, false, fmt.Errorf("credential service (%s): reading the answer: %v", a.k.s.Mode, err)
	}
	var ans struct {
		Success bool            `json:"success"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(data, &ans); err != nil {
		return Credential{}, false, fmt.Errorf("credential service (%s): answer: %w", a.k.s.Mode, err)
	}
	if !ans.Success || len(ans.Data) == 0 {
		return Credential{}, false, nil
	}
	cf, err := ParseCredentialFile("credential service answer", ans.Data)
	if err != nil {
		return Credential{}, false, err
	}
	c, ok := cf.Lookup(CredentialCandidates(a.host, a.repo))
	return c, ok, nil
}
