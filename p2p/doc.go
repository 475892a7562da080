// Package p2p fetches blob chunks from elsewhere than the registry, so a fleet pulls
// each byte from the registry about once (docs/p2p.md). It has three modes, chosen
// by p2pConfig in overlaybd.json (config.P2PConfig); in all of them the extent cache
// (package cache) stays in front, and every byte is checked as registry bytes are.
//
//   - Proxy modes (Proxy, a registry.DataProxy): the reference's URL-prefix proxy
//     (NewURLProxy: dadi-p2proxy, peerd) and Dragonfly's dfdaemon as an HTTP forward
//     proxy (NewDragonfly), which sends each read's priority (blobio.Intent, an
//     argument of registry.DataProxy.RoundTrip) as X-Dragonfly-Priority. Both fall
//     back to the registry when the proxy fails.
//   - Peer mode, built in: Server answers chunk requests from the local cache;
//     Client turns a registry blob into a Source that asks the peers of each chunk's
//     rendezvous ranking (PeerSet, Rank, Upstream) before the registry, penalising
//     peers that fail or send bytes that fail their checks.
//
// Metrics are the Prometheus counters of both modes. The package knows the registry
// client and the cache, never the daemon or a device.
package p2p
