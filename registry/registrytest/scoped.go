package registrytest

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// WithRepoScopedBlobs makes blobs belong to repositories, as in the distribution
// registry (go-containerregistry's in-memory registry shares every blob with every
// repository): a blob is found (HEAD, GET) only in a repository it was uploaded or
// mounted into. It supports cross-repository mounts
// (POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<repo>); BlobUploads and
// BlobMounts tell what reached each repository which way.
func WithRepoScopedBlobs() Option {
	return func(o *options) { o.scoped = true }
}

// scopedBlobs is the per-repository view of the blob store.
type scopedBlobs struct {
	mu      sync.Mutex
	links   map[string]map[string]bool // repo -> digests found there
	uploads map[string][]string        // repo -> digests uploaded, in order
	mounts  map[string][]string        // repo -> digests mounted, in order
}

func newScopedBlobs() *scopedBlobs {
	return &scopedBlobs{links: map[string]map[string]bool{}, uploads: map[string][]string{}, mounts: map[string][]string{}}
}

func (s *scopedBlobs) linked(repo, digest string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links[repo][digest]
}

// link makes digest found in repo and records how it got there.
func (s *scopedBlobs) link(repo, digest string, mounted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.links[repo] == nil {
		s.links[repo] = map[string]bool{}
	}
	s.links[repo][digest] = true
	if mounted {
		s.mounts[repo] = append(s.mounts[repo], digest)
	} else {
		s.uploads[repo] = append(s.uploads[repo], digest)
	}
}

// BlobUploads lists the digests of the blob uploads completed into repo, in order
// (WithRepoScopedBlobs only).
func (r *Registry) BlobUploads(repo string) []string {
	if r.scoped == nil {
		return nil
	}
	r.scoped.mu.Lock()
	defer r.scoped.mu.Unlock()
	return slices.Clone(r.scoped.uploads[repo])
}

// BlobMounts lists the digests mounted into repo from other repositories, in order
// (WithRepoScopedBlobs only).
func (r *Registry) BlobMounts(repo string) []string {
	if r.scoped == nil {
		return nil
	}
	r.scoped.mu.Lock()
	defer r.scoped.mu.Unlock()
	return slices.Clone(r.scoped.mounts[repo])
}

// statusRecorder remembers the status code the inner registry answered.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// serveScoped handles the requests repository scoping changes; false leaves req
// to the usual handling.
func (r *Registry) serveScoped(w http.ResponseWriter, req *http.Request) bool {
	s := r.scoped
	if repo, digest, ok := blobPath(req.URL.Path); ok {
		if (req.Method == http.MethodGet || req.Method == http.MethodHead) && !s.linked(repo, digest) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			if req.Method == http.MethodGet {
				w.Write([]byte(`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`))
			}
			return true
		}
		return false
	}
	rest, ok := strings.CutPrefix(req.URL.Path, "/v2/")
	if !ok {
		return false
	}
	i := strings.Index(rest, "/blobs/uploads")
	if i <= 0 {
		return false
	}
	repo := rest[:i]
	q := req.URL.Query()
	if req.Method == http.MethodPost && q.Get("mount") != "" {
		digest, from := q.Get("mount"), q.Get("from")
		if from != "" && s.linked(from, digest) {
			s.link(repo, digest, true)
			w.Header().Set("Location", "/v2/"+repo+"/blobs/"+digest)
			w.Header().Set("Docker-Content-Digest", digest)
			w.WriteHeader(http.StatusCreated)
			return true
		}
		// Not mountable: an ordinary upload starts, as in distribution.
		req = req.Clone(req.Context())
		q.Del("mount")
		q.Del("from")
		q.Del("origin")
		req.URL.RawQuery = q.Encode()
		req.RequestURI = (&url.URL{Path: req.URL.Path, RawQuery: req.URL.RawQuery}).RequestURI()
	}
	rec := &statusRecorder{ResponseWriter: w}
	r.inner.ServeHTTP(rec, req)
	if digest := q.Get("digest"); digest != "" && rec.status == http.StatusCreated {
		s.link(repo, digest, false)
	}
	return true
}
