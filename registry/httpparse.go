package registry

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ContentRange is a parsed "Content-Range: bytes first-last/total" header.
// Total is -1 when the server sent "*".
type ContentRange struct {
	First, Last, Total int64
}

// FormatRange is the Range request header for bytes first..last (inclusive), the
// one form obd sends to registries, proxies and peers.
func FormatRange(first, last int64) string {
	return "bytes=" + strconv.FormatInt(first, 10) + "-" + strconv.FormatInt(last, 10)
}

// ParseRange parses the one form FormatRange writes, "bytes=<first>-<last>"; it is
// all the P2P peer server accepts.
func ParseRange(s string) (first, last int64, ok bool) {
	r, found := strings.CutPrefix(s, "bytes=")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(r, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := parseNonNegative(a)
	last, err2 := parseNonNegative(b)
	if err1 != nil || err2 != nil || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// String formats the Content-Range value ("bytes first-last/total", total "*" when
// -1) that ParseContentRange reads.
func (cr ContentRange) String() string {
	total := "*"
	if cr.Total >= 0 {
		total = strconv.FormatInt(cr.Total, 10)
	}
	return fmt.Sprintf("bytes %d-%d/%s", cr.First, cr.Last, total)
}

// ParseContentRange parses a byte-range Content-Range value. It accepts only the
// satisfied form (RFC 9110 §14.4); "bytes */total" (sent with 416) is an error.
// Registry answers and P2P peers' and proxies' answers are checked with it.
func ParseContentRange(s string) (ContentRange, error) {
	var cr ContentRange
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return cr, fmt.Errorf("Content-Range %q: want \"bytes first-last/total\"", s)
	}
	rng, total, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return cr, fmt.Errorf("Content-Range %q: missing /total", s)
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return cr, fmt.Errorf("Content-Range %q: missing first-last", s)
	}
	var err error
	if cr.First, err = parseNonNegative(first); err != nil {
		return cr, fmt.Errorf("Content-Range %q: first byte: %v", s, err)
	}
	if cr.Last, err = parseNonNegative(last); err != nil {
		return cr, fmt.Errorf("Content-Range %q: last byte: %v", s, err)
	}
	if cr.Last < cr.First {
		return cr, fmt.Errorf("Content-Range %q: last byte before first", s)
	}
	if total == "*" {
		cr.Total = -1
		return cr, nil
	}
	if cr.Total, err = parseNonNegative(total); err != nil {
		return cr, fmt.Errorf("Content-Range %q: total: %v", s, err)
	}
	if cr.Last >= cr.Total {
		return cr, fmt.Errorf("Content-Range %q: last byte beyond total", s)
	}
	return cr, nil
}

// parseNonNegative accepts only ASCII digits (no sign, no spaces) that fit int64.
func parseNonNegative(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty number")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("not a number: %q", s)
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
// ok is false when the header is absent or unparseable.
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := parseNonNegative(v); err == nil {
		if n > 24*3600 {
			n = 24 * 3600 // bound before converting: the caller caps it further
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// redactURL drops the query and any user info so signed URLs and tokens never reach
// logs or error messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if i := strings.IndexAny(s, "?#"); i >= 0 {
			return s[:i] + "?REDACTED"
		}
		return s
	}
	red := u.RawQuery != "" || u.User != nil
	u.RawQuery, u.Fragment, u.User = "", "", nil
	if red {
		return u.String() + "?REDACTED"
	}
	return u.String()
}

// signedURLExpiry finds the expiry time a pre-signed storage URL carries, for the
// common schemes: S3 SigV4 (X-Amz-Date + X-Amz-Expires), S3 SigV2 / GCS / CloudFront
// (Expires=<unix>), Azure SAS (se=<RFC 3339>).
func signedURLExpiry(s string) (time.Time, bool) {
	u, err := url.Parse(s)
	if err != nil || u.RawQuery == "" {
		return time.Time{}, false
	}
	q := u.Query()
	get := func(name string) string {
		for k, v := range q {
			if strings.EqualFold(k, name) && len(v) > 0 {
				return v[0]
			}
		}
		return ""
	}
	if d, e := get("X-Amz-Date"), get("X-Amz-Expires"); d != "" && e != "" {
		t, err1 := time.Parse("20060102T150405Z", d)
		secs, err2 := parseNonNegative(e)
		if err1 == nil && err2 == nil && secs < 1<<31 {
			return t.Add(time.Duration(secs) * time.Second), true
		}
	}
	if e := get("Expires"); e != "" {
		if secs, err := parseNonNegative(e); err == nil && secs < 1<<40 {
			return time.Unix(secs, 0), true
		}
	}
	if se := get("se"); se != "" {
		if t, err := time.Parse(time.RFC3339, se); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
