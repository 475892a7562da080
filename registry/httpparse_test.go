package registry

import (
	"strings"
	"testing"
	"time"
)

func TestParseContentRange(t *testing.T) {
	for in, want := range map[string]ContentRange{
		"bytes 0-0/1":        {0, 0, 1},
		"bytes 10-19/642560": {10, 19, 642560},
		" bytes 5-9/*":       {5, 9, -1},
		"bytes 0-9/10":       {0, 9, 10},
		"bytes 0-9223372036854775806/9223372036854775807": {0, 9223372036854775806, 9223372036854775807},
	} {
		got, err := ParseContentRange(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "bytes */10", "bytes 5-4/10", "bytes 0-10/10", "bytes -1-5/10", "bytes 1-2", "items 0-1/2",
		"bytes 0-1/2/3", "bytes 0-99999999999999999999/1", "bytes +1-2/3", "bytes 0- 1/3", "bytes 0-1/-3"} {
		if cr, err := ParseContentRange(in); err == nil {
			t.Errorf("%q accepted: %+v", in, cr)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"0": 0, "3": 3 * time.Second, " 120 ": 2 * time.Minute,
		"99999999999":                   24 * time.Hour,
		"Thu, 01 Jan 2026 00:00:05 GMT": 5 * time.Second,
		"Wed, 31 Dec 2025 00:00:05 GMT": 0,
	} {
		got, ok := parseRetryAfter(in, now)
		if !ok || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "-1", "soon", "1.5"} {
		if d, ok := parseRetryAfter(in, now); ok {
			t.Errorf("%q accepted: %v", in, d)
		}
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://s3.example/b/o?X-Amz-Signature=abc&X-Amz-Credential=k": "https://s3.example/b/o?REDACTED",
		"https://user:pw@h/v2/r/blobs/sha256:1":                         "https://h/v2/r/blobs/sha256:1?REDACTED",
		"http://h/v2/r/blobs/sha256:1":                                  "http://h/v2/r/blobs/sha256:1",
		"%zz?sig=1":                                                     "%zz?REDACTED",
	} {
		got := redactURL(in)
		if got != want || strings.Contains(got, "abc") || strings.Contains(got, "pw") {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestSignedURLExpiry(t *testing.T) {
	for in, want := range map[string]time.Time{
		"https://s3/o?X-Amz-Date=20260101T000000Z&X-Amz-Expires=600&X-Amz-Signature=x": time.Date(2026, 1, 1, 0, 10, 0, 0, time.UTC),
		"https://cdn/o?Expires=1767225600&Signature=x":                                 time.Unix(1767225600, 0),
		"https://blob.core.windows.net/c/b?sv=1&se=2026-01-01T00:05:00Z&sig=x":         time.Date(2026, 1, 1, 0, 5, 0, 0, time.UTC),
	} {
		got, ok := signedURLExpiry(in)
		if !ok || !got.Equal(want) {
			t.Errorf("%q: %v %v, want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"https://h/o", "https://h/o?exp=1&sig=2", "https://h/o?Expires=soon", "%zz"} {
		if got, ok := signedURLExpiry(in); ok {
			t.Errorf("%q: %v", in, got)
		}
	}
}
