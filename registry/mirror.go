package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"go.uber.org/zap"
)

// dockerHubNames are the names Docker Hub goes by in references, blob URLs and
// mirror configs.
var dockerHubNames = []string{"docker.io", name.DefaultRegistry, "registry-1.docker.io"}

// mirrorsOf returns the mirrors configured for registry host.
func (c *Client) mirrorsOf(host string) []string {
	if len(c.opts.Mirrors) == 0 {
		return nil
	}
	host = strings.ToLower(host)
	if ms := c.opts.Mirrors[host]; len(ms) > 0 {
		return ms
	}
	for _, h := range dockerHubNames {
		if h == host {
			for _, alias := range dockerHubNames {
				if ms := c.opts.Mirrors[alias]; len(ms) > 0 {
					return ms
				}
			}
		}
	}
	return nil
}

// resolveMirrors resolves r at each mirror of its registry in turn and returns
// the first answer, described as the origin's (Ref, Registry and RepoBlobURL name
// the origin, so the config stays valid without the mirror; OpenBlob goes to the
// mirrors first again). nil when there is no mirror or none answered.
func (c *Client) resolveMirrors(ctx context.Context, r name.Reference) *Image {
	origin := r.Context()
	for _, m := range c.mirrorsOf(origin.RegistryStr()) {
		mr, err := c.onMirror(r, m)
		if err == nil {
			var im *Image
			err = c.retry(ctx, func(ctx context.Context) error {
				var err error
				im, err = c.resolveOnce(ctx, mr)
				return err
			})
			if err == nil {
				c.opts.Logger.Info("resolved through mirror", zap.String("image", r.Name()), zap.String("mirror", m))
				im.Ref, im.Registry, im.RepoBlobURL = r.Name(), origin.RegistryStr(), c.repoBlobURL(origin)
				return im
			}
		}
		c.opts.Logger.Warn("registry mirror failed, trying the next source", zap.String("image", r.Name()),
			zap.String("mirror", m), zap.Error(err))
	}
	return nil
}

// onMirror is r with its registry replaced by mirror.
func (c *Client) onMirror(r name.Reference, mirror string) (name.Reference, error) {
	var opts []name.Option
	if c.plainAllowed(mirror) {
		opts = append(opts, name.Insecure)
	}
	repo := mirror + "/" + r.Context().RepositoryStr()
	switch v := r.(type) {
	case name.Digest:
		return name.NewDigest(repo+"@"+v.DigestStr(), opts...)
	default:
		return name.NewTag(repo+":"+r.Identifier(), opts...)
	}
}

// openMirrorBlob opens blobURL at the first mirror of its registry that has it;
// nil when there is no mirror or none could open it.
func (c *Client) openMirrorBlob(ctx context.Context, blobURL string, size int64) *Blob {
	u, err := url.Parse(blobURL)
	if err != nil {
		return nil
	}
	for _, m := range c.mirrorsOf(u.Host) {
		mu, err := c.mirrorBlobURL(ctx, u, m)
		var b *Blob
		if err == nil {
			b, err = c.openBlobAt(ctx, mu, size)
		}
		if err == nil {
			return b
		}
		c.opts.Logger.Warn("registry mirror failed, trying the next source", zap.String("blob", redactURL(blobURL)),
			zap.String("mirror", m), zap.Error(err))
	}
	return nil
}

// mirrorBlobURL is u on mirror, with the scheme the mirror answers on (a
// handshake learns it: an insecure mirror may speak TLS or plain HTTP).
func (c *Client) mirrorBlobURL(ctx context.Context, u *url.URL, mirror string) (string, error) {
	_, repoPath, digest, err := splitBlobURL(u.String())
	if err != nil {
		return "", err
	}
	repo, err := c.repository(mirror, repoPath)
	if err != nil {
		return "", err
	}
	if _, err := c.authTransport(ctx, repo); err != nil {
		return "", err
	}
	return c.schemeOf(repo) + "://" + mirror + "/v2/" + repoPath + "/blobs/" + digest, nil
}

// withTLSHint adds to a failure to reach host what the operator can do when the
// cause is the registry's transport security: a plain-HTTP registry or an
// untrusted certificate.
func withTLSHint(host string, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case errors.Is(err, errPlainHTTP):
		return fmt.Errorf("%w (allow plain HTTP to registry %s with --insecure-registry %s or overlaybd.json insecureRegistries)", err, host, host)
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%w (registry %s speaks plain HTTP; if that is intended, allow it with --insecure-registry %s or overlaybd.json insecureRegistries)", err, host, host)
	case isCertErr(err) || strings.Contains(msg, "x509: ") || strings.Contains(msg, "tls: failed to verify"):
		return fmt.Errorf("%w (the TLS certificate of registry %s is not trusted: add its CA with overlaybd.json certConfig.caFile, or skip verification with --insecure-registry %s)", err, host, host)
	}
	return err
}

func isCertErr(err error) bool {
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalid)
}
