package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client talks to a daemon over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
		Timeout: 10 * time.Minute, // an attach of a remote image may take a while
	}}
}

func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://obd"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("obd daemon at %s: %w (is `obd daemon` running?)", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e ErrorBody
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return fmt.Errorf("%s", e.Error)
		}
		return fmt.Errorf("obd daemon: %s", resp.Status)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// Attach asks the daemon to attach the config.
func (c *Client) Attach(ctx context.Context, configPath string, fe Frontend) (Status, error) {
	return c.AttachTrace(ctx, configPath, fe, TraceOptions{})
}

// AttachTrace is Attach with run-time trace recording or replay.
func (c *Client) AttachTrace(ctx context.Context, configPath string, fe Frontend, tr TraceOptions) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodPost, "/v1/attach", AttachRequest{Config: configPath, Frontend: fe, TraceOptions: tr}, &st)
	return st, err
}

// Detach asks the daemon to detach a device by id or path.
func (c *Client) Detach(ctx context.Context, device string, force bool) error {
	return c.call(ctx, http.MethodPost, "/v1/detach", DetachRequest{Device: device, Force: force}, nil)
}

// List returns the daemon's devices.
func (c *Client) List(ctx context.Context) ([]Status, error) {
	var out []Status
	err := c.call(ctx, http.MethodGet, "/v1/list", nil, &out)
	return out, err
}

// AttachImage asks the daemon to attach an image by reference.
func (c *Client) AttachImage(ctx context.Context, req ImageRequest) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodPost, "/v1/attach-image", req, &st)
	return st, err
}

// Metrics returns the daemon's metrics in the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://obd/v1/metrics", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("obd daemon at %s: %w (is `obd daemon` running?)", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("obd daemon: metrics: %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return string(b), err
}
