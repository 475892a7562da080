package p2p

import (
	"context"
	"net"
	"time"
)

// netDialer dials peers with a short timeout: a dead peer must cost little
// before the next one is asked.
type netDialer struct{ timeout time.Duration }

func (d *netDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.timeout, KeepAlive: 30 * time.Second}
	return nd.DialContext(ctx, network, addr)
}
