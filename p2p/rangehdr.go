package p2p

import (
	"errors"
	"strconv"

	"github.com/obd-project/obd/registry"
)

// parseRange parses a single closed range "bytes=<first>-<last>", the only form
// obd sends (registry.FormatRange) and the peer server accepts.
var parseRange = registry.ParseRange

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
