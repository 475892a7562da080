package registry

import (
	"errors"
	"fmt"
)

// Sentinel errors, matched with errors.Is. The device layer maps them to errno
// values (ErrUnavailable → EIO for the range, ErrUnauthorized → EPERM, ...).
var (
	// ErrUnavailable: the registry or blob storage did not deliver the range within
	// the retry budget (attempts and deadline). Transient by nature.
	ErrUnavailable = errors.New("registry unavailable")
	// ErrNotFound: the manifest or blob does not exist (HTTP 404), after one re-resolve.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry refused our credentials (401/403 after a re-auth).
	ErrUnauthorized = errors.New("authentication failed")
	// ErrBadResponse: the server answered something that is not the requested
	// range (wrong Content-Range, wrong length, 200 for a large range, 416, a blob that
	// changed size or ETag). Not retried when the answer is stable.
	ErrBadResponse = errors.New("unexpected response")
	// ErrNotOverlaybd: the image has a layer that is not an overlaybd blob.
	ErrNotOverlaybd = errors.New("not an overlaybd image")
)

// StatusError is an HTTP status that ended a request. URL has its query redacted.
type StatusError struct {
	URL        string
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("GET %s: HTTP %d", e.URL, e.StatusCode)
}
