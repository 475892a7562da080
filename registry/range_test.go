package registry

import "testing"

// The Range and Content-Range values obd writes are the ones it reads back: the
// registry client, the P2P client and proxy check, and the peer server share them.
func TestRangeFraming(t *testing.T) {
	for _, r := range [][2]int64{{0, 0}, {5, 10}, {1 << 40, 1<<40 + 1<<20 - 1}} {
		h := FormatRange(r[0], r[1])
		first, last, ok := ParseRange(h)
		if !ok || first != r[0] || last != r[1] {
			t.Fatalf("ParseRange(%q) = %d, %d, %v", h, first, last, ok)
		}
		cr := ContentRange{First: r[0], Last: r[1], Total: r[1] + 1}
		got, err := ParseContentRange(cr.String())
		if err != nil || got != cr {
			t.Fatalf("ParseContentRange(%q) = %+v, %v", cr.String(), got, err)
		}
	}
	if s := (ContentRange{First: 1, Last: 2, Total: -1}).String(); s != "bytes 1-2/*" {
		t.Fatalf("unknown total: %q", s)
	}
	for _, bad := range []string{"", "bytes=", "bytes=5", "bytes=5-", "bytes=-5", "bytes=10-5", "bytes=1-2,4-5", "bytes=+1-2", "items=1-2", "bytes=99999999999999999999-1"} {
		if a, b, ok := ParseRange(bad); ok {
			t.Fatalf("ParseRange(%q) = %d, %d, accepted", bad, a, b)
		}
	}
}
