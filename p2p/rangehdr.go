package p2p

import (
	"errors"
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
