package registry

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ParseReference parses ref, allowing plain HTTP for loopback and insecure hosts
// as the client does.
func (c *Client) ParseReference(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	if c.plainAllowed(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			return nil, fmt.Errorf("image reference %q: %w", ref, err)
		}
	}
	return r, nil
}

// RemoteOptions are go-containerregistry options that reach registries the way this
// client does (its TLS settings, plain HTTP only where allowed, User-Agent) with its
// credentials, for pulling and pushing whole images (obd convert, obd push).
func (c *Client) RemoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithTransport(c), remote.WithAuthFromKeychain(c.keychain), remote.WithContext(ctx)}
}
