package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/obd-project/obd/daemon"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/remote"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/urfave/cli/v2"
)

// downloadSummary is the DOWNLOAD column of `obd list`: layers done of layers
// downloading, the share of bytes local, and failures.
func downloadSummary(ds []download.Status) string {
	if len(ds) == 0 {
		return "-"
	}
	var done, failed int
	var have, size int64
	for _, d := range ds {
		have += d.Bytes
		size += d.Size
		switch d.State {
		case download.StateDone:
			done++
		case download.StateFailed:
			failed++
		}
	}
	s := fmt.Sprintf("%d/%d", done, len(ds))
	if size > 0 {
		s += fmt.Sprintf(" %d%%", have*100/size)
	}
	if failed > 0 {
		s += fmt.Sprintf(" %d failed", failed)
	}
	return s
}

// traceSummary is the TRACE column of `obd list`: the run-time trace of the attach
// and, after a daemon restart, what the recovery did with it (the note is in --json).
func traceSummary(r daemon.Record) string {
	s := "-"
	switch {
	case r.RecordTrace != "":
		s = "record"
	case r.Prefetch != "":
		s = "prefetch"
	}
	if r.TraceRecovery != "" {
		s += " (" + r.TraceRecovery + ")"
	}
	return s
}

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "fetch an image's layers whole into the extent cache (digests verified), so attaching it needs no registry",
		ArgsUsage: "REGISTRY/REPO:TAG | REGISTRY/REPO@sha256:...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "global-config", Value: "/etc/overlaybd/overlaybd.json", Usage: "global config (registry credentials, cache)"},
			insecureRegistryFlag,
			&cli.StringFlag{Name: "cache-dir", Usage: "registry cache directory (default: cacheConfig.cacheDir); use the daemon's"},
			&cli.IntFlag{Name: "parallel", Value: 16, Usage: "chunks fetched at once"},
			&cli.BoolFlag{Name: "blobs-only", Usage: "fetch the blobs only, keep no image record: attaching the reference still resolves it at the registry"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, 1); err != nil {
				return err
			}
			_, rem, err := remoteFromFlags(c)
			if err != nil {
				return err
			}
			defer rem.Close()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			po := remote.PullOptions{Parallel: c.Int("parallel"), BlobsOnly: c.Bool("blobs-only")}
			start := time.Now()
			prog := newProgress("pull "+c.Args().First(), 0, c.Bool("quiet"))
			po.Progress = prog.set
			res, err := rem.Pull(ctx, c.Args().First(), po)
			prog.done()
			if err != nil {
				return fmt.Errorf("pull %s: %w", c.Args().First(), err)
			}
			if c.Bool("json") {
				return json.NewEncoder(os.Stdout).Encode(struct {
					Ref       string `json:"ref"`
					Layers    int    `json:"layers"`
					Bytes     int64  `json:"bytes"`
					Fetched   int64  `json:"fetched"`
					BlobsOnly bool   `json:"blobsOnly"`
				}{res.Ref, res.Layers, res.Bytes, res.Fetched, po.BlobsOnly})
			}
			_, err = fmt.Printf("%s: %d layers, %s (%s fetched) in %s\n", res.Ref, res.Layers, humanBytes(uint64(res.Bytes)),
				humanBytes(uint64(res.Fetched)), time.Since(start).Round(time.Millisecond))
			return err
		},
	}
}

// statRow is one sample of `obd stats`.
type statRow struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	Value  float64           `json:"value"`
}

func statsCommand() *cli.Command {
	return &cli.Command{
		Name:  "stats",
		Usage: "print the daemon's metrics (registry, cache, downloads, devices) as a table",
		Flags: []cli.Flag{
			socketFlag,
			&cli.StringFlag{Name: "url", Usage: "read this Prometheus endpoint (e.g. http://127.0.0.1:9863/metrics) instead of the daemon's socket"},
			&cli.BoolFlag{Name: "all", Usage: "include the Go runtime and process metrics"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: func(c *cli.Context) error {
			var text string
			var err error
			if u := c.String("url"); u != "" {
				text, err = fetchMetrics(c.Context, u)
			} else {
				text, err = daemon.NewClient(c.String("socket")).Metrics(c.Context)
			}
			if err != nil {
				return err
			}
			rows, err := parseStats(strings.NewReader(text), c.Bool("all"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return json.NewEncoder(os.Stdout).Encode(rows)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "METRIC\tLABELS\tVALUE")
			for _, r := range rows {
				var ls []string
				for k, v := range r.Labels {
					ls = append(ls, k+"="+v)
				}
				sort.Strings(ls)
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, strings.Join(ls, ","), formatValue(r.Value))
			}
			return tw.Flush()
		},
	}
}

func formatValue(v float64) string {
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%.6g", v)
}

func fetchMetrics(ctx context.Context, u string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return string(b), err
}

// parseStats flattens Prometheus text into rows, sorted by name: histograms and
// summaries become _count and _sum. Without all, only obd_* metrics are kept.
func parseStats(r io.Reader, all bool) ([]statRow, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	var rows []statRow
	for name, f := range fams {
		if !all && !strings.HasPrefix(name, "obd_") {
			continue
		}
		for _, m := range f.GetMetric() {
			ls := map[string]string{}
			for _, l := range m.GetLabel() {
				ls[l.GetName()] = l.GetValue()
			}
			add := func(n string, v float64) { rows = append(rows, statRow{Name: n, Labels: ls, Value: v}) }
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				add(name, m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				add(name, m.GetGauge().GetValue())
			case dto.MetricType_HISTOGRAM:
				add(name+"_count", float64(m.GetHistogram().GetSampleCount()))
				add(name+"_sum", m.GetHistogram().GetSampleSum())
			case dto.MetricType_SUMMARY:
				add(name+"_count", float64(m.GetSummary().GetSampleCount()))
				add(name+"_sum", m.GetSummary().GetSampleSum())
			default:
				add(name, m.GetUntyped().GetValue())
			}
		}
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if rows[i].Name != rows[j].Name {
			return rows[i].Name < rows[j].Name
		}
		return fmt.Sprint(rows[i].Labels) < fmt.Sprint(rows[j].Labels)
	})
	return rows, nil
}
