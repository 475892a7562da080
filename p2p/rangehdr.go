package p2p

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// parseRange parses a single closed range "bytes=<first>-<last>", the only form
// obd sends and the peer server accepts.
func parseRange(s string) (first, last int64, ok bool) {
	r, found := strings.CutPrefix(s, "bytes=")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(r, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := parseUint(a)
	last, err2 := parseUint(b)
	if err1 != nil || err2 != nil || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// parseContentRange parses "bytes <first>-<last>/<total>"; total is -1 for "*".
func parseContentRange(s string) (first, last, total int64, err error) {
	r, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, fmt.Errorf("Content-Range %q: want bytes <first>-<last>/<total>", s)
	}
	span, tot, found := strings.Cut(r, "/")
	if !found {
		return 0, 0, 0, fmt.Errorf("Content-Range %q: no total", s)
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, 0, fmt.Errorf("Content-Range %q: no range", s)
	}
	if first, err = parseUint(a); err == nil {
		last, err = parseUint(b)
	}
	if err != nil || last < first {
		return 0, 0, 0, fmt.Errorf("Content-Range %q: bad range", s)
	}
	total = -1
	if tot != "*" {
		if total, err = parseUint(tot); err != nil || total <= last {
			return 0, 0, 0, fmt.Errorf("Content-Range %q: bad total", s)
		}
	}
	return first, last, total, nil
}

var errNumber = errors.New("not a decimal number")

// parseUint accepts 1-18 decimal digits only (no sign, no spaces): it cannot overflow int64.
func parseUint(s string) (int64, error) {
	if len(s) == 0 || len(s) > 18 {
		return 0, errNumber
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errNumber
		}
	}
	return strconv.ParseInt(s, 10, 64)
}
