package main

import (
	"strings"
	"testing"

	"github.com/obd-project/obd/download"
)

func TestParseStats(t *testing.T) {
	text := `# TYPE obd_fetched_bytes_total counter
obd_fetched_bytes_total{source="registry"} 1234
# TYPE obd_registry_request_duration_seconds histogram
obd_registry_request_duration_seconds_bucket{host="h",le="+Inf"} 3
obd_registry_request_duration_seconds_sum{host="h"} 0.5
obd_registry_request_duration_seconds_count{host="h"} 3
# TYPE go_goroutines gauge
go_goroutines 7
`
	rows, err := parseStats(strings.NewReader(text), false)
	if err != nil {
		t.Fatal(err)
	}
	want := []statRow{
		{"obd_fetched_bytes_total", map[string]string{"source": "registry"}, 1234},
		{"obd_registry_request_duration_seconds_count", map[string]string{"host": "h"}, 3},
		{"obd_registry_request_duration_seconds_sum", map[string]string{"host": "h"}, 0.5},
	}
	if len(rows) != len(want) {
		t.Fatalf("rows %+v", rows)
	}
	for i := range want {
		if rows[i].Name != want[i].Name || rows[i].Value != want[i].Value || len(rows[i].Labels) != 1 {
			t.Errorf("row %d: %+v, want %+v", i, rows[i], want[i])
		}
	}
	if all, _ := parseStats(strings.NewReader(text), true); len(all) != 4 {
		t.Errorf("--all: %d rows, want 4", len(all))
	}
	if _, err := parseStats(strings.NewReader("obd_x{ 1\n"), false); err == nil {
		t.Error("malformed metrics accepted")
	}
}

func FuzzParseStats(f *testing.F) {
	f.Add("# TYPE a counter\na{b=\"c\"} 1\n")
	f.Add("obd_x 1\nobd_x 2\n")
	f.Fuzz(func(t *testing.T, s string) {
		parseStats(strings.NewReader(s), true) // must not panic or hang
	})
}

func TestDownloadSummary(t *testing.T) {
	if s := downloadSummary(nil); s != "-" {
		t.Errorf("none: %q", s)
	}
	s := downloadSummary([]download.Status{{State: download.StateDone, Bytes: 30, Size: 30}, {State: download.StateFailed, Bytes: 10, Size: 70}})
	if s != "1/2 40% 1 failed" {
		t.Errorf("summary %q", s)
	}
}
