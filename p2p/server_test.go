package p2p

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/obd-project/obd/cache"
	"go.uber.org/zap"
)

// TestServerRefuses: bad token, bad digest, a URL naming another blob, ranges
// outside the blob or too large: refused before any fetch.
func TestServerRefuses(t *testing.T) {
	ca, err := cache.Open(t.TempDir(), cache.Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	opened := 0
	s, err := NewServer(ServerOptions{Cache: ca, Token: "secret", Logger: zap.NewNop(),
		Open: func(string, string, int64) (cache.Source, error) { opened++; return nil, http.ErrAbortHandler }})
	if err != nil {
		t.Fatal(err)
	}
	const d = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	ok := http.Header{"Authorization": {"Bearer secret"}, "Range": {"bytes=0-9"},
		HeaderBlobURL: {"http://127.0.0.1:1/v2/r/blobs/" + d}, HeaderBlobSize: {"100"}}
	for _, tc := range []struct {
		name, path, key, val string
		code                 int
	}{
		{"no token", blobPath + d, "Authorization", "", 401},
		{"wrong token", blobPath + d, "Authorization", "Bearer secreT", 401},
		{"bad digest", blobPath + "sha256:zz", "", "", 400},
		{"other blob", blobPath + d, HeaderBlobURL, "http://127.0.0.1:1/v2/r/blobs/sha256:1111111111111111111111111111111111111111111111111111111111111111", 400},
		{"bad size", blobPath + d, HeaderBlobSize, "-1", 400},
		{"past end", blobPath + d, "Range", "bytes=95-100", 416},
		{"two ranges", blobPath + d, "Range", "bytes=0-1,5-6", 416},
		{"huge", blobPath + d, "Range", "bytes=0-999999999", 416},
	} {
		r := httptest.NewRequest(http.MethodGet, tc.path, nil)
		r.Header = ok.Clone()
		if tc.key != "" {
			r.Header.Set(tc.key, tc.val)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != tc.code {
			t.Errorf("%s: HTTP %d, want %d", tc.name, w.Code, tc.code)
		}
	}
	if opened != 0 {
		t.Errorf("%d registry opens for refused requests", opened)
	}
}
