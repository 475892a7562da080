package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// parseSize accepts a byte count with an optional unit: "1073741824", "64GiB", "10G", "512K",
// "1.5GiB". Units K/M/G/T/P (with or without "i" and "B") are powers of 1024, as dd and
// overlaybd-create (whose size is in GiB) mean them.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("size %q: empty", s)
	}
	i := len(t)
	for i > 0 && !(t[i-1] >= '0' && t[i-1] <= '9' || t[i-1] == '.') {
		i--
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
	sh, ok := shift[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("size %q: want a number with an optional unit K, M, G, T (powers of 1024), e.g. 64GiB", s)
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n < 0 || (sh > 0 && n > math.MaxInt64>>sh) {
			return 0, fmt.Errorf("size %q: out of range", s)
		}
		return n << sh, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	v := f * float64(uint64(1)<<sh)
	if err != nil || f < 0 || v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q: out of range", s)
	}
	return int64(v), nil
}
