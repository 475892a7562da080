package main

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "1073741824": 1 << 30, "64GiB": 64 << 30, "10G": 10 << 30, "10g": 10 << 30,
		"512K": 512 << 10, "4KiB": 4096, "1.5GiB": 3 << 29, "2TB": 2 << 40, " 8M ": 8 << 20,
	}
	for in, want := range good {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1", "12X", "99999999999P", "1.2.3G", "abc"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}
