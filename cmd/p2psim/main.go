// Command p2psim estimates how a fleet pulls one image's working set under
// obd's P2P modes, with obd's own peer selection (p2p.Rank, p2p.Upstream):
// registry egress, per-host upload, and the time until every host holds the
// working set, compared with no P2P and with a DADI-style tree per blob.
//
// The model is a pipelined fluid bound: chunks stream through each path
// concurrently, so completion time is the busiest link's bytes over its
// bandwidth (registry egress, a host's upload, a host's download) plus the
// latency of the longest path one chunk travels (hops × (RTT + chunk/NIC)).
// Containers on one host share its cache, so each host needs the working set
// once. Every host starts at once (a flash crowd) and reads the same chunks.
//
//	go run ./cmd/p2psim            # the defaults of docs/p2p.md
//	go run ./cmd/p2psim -hosts 5000 -fanout 4
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/obd-project/obd/p2p"
)

func main() {
	hosts := flag.Int("hosts", 1000, "hosts in the fleet")
	containers := flag.Int("containers", 10, "containers per host (they share the host's cache)")
	imageGiB := flag.Float64("image-gib", 4, "image size, GiB")
	wsFrac := flag.Float64("working-set", 0.05, "fraction of the image read at start-up")
	chunk := flag.Int("chunk", 256<<10, "chunk = cache refill unit, bytes")
	nicGbit := flag.Float64("nic-gbit", 10, "host NIC, Gbit/s each way")
	regGbit := flag.Float64("registry-gbit", 10, "registry egress, Gbit/s in all")
	rtt := flag.Duration("rtt", 200*time.Microsecond, "RTT between hosts")
	regRTT := flag.Duration("registry-rtt", 2*time.Millisecond, "RTT to the registry")
	fanOut := flag.Int("fanout", 8, "obd tree width (p2pConfig.fanOut)")
	dadiFan := flag.Int("dadi-fanout", 8, "children per node of the DADI-style tree")
	flag.Parse()
	if *hosts < 2 || *chunk <= 0 || *fanOut <= 0 || *dadiFan <= 0 || *wsFrac <= 0 || *wsFrac > 1 {
		fmt.Fprintln(os.Stderr, "p2psim: bad parameters")
		os.Exit(2)
	}
	start := time.Now()
	nic := *nicGbit * 1e9 / 8
	reg := *regGbit * 1e9 / 8
	ws := int64(*imageGiB * *wsFrac * (1 << 30))
	nChunks := (ws + int64(*chunk) - 1) / int64(*chunk)
	ws = nChunks * int64(*chunk)
	hop := func(r time.Duration) float64 { return r.Seconds() + float64(*chunk)/nic }

	peers := make([]string, *hosts)
	for i := range peers {
		peers[i] = fmt.Sprintf("http://10.%d.%d.%d:19150", i>>16&255, i>>8&255, i&255)
	}
	const digest = "sha256:5b0d2f6c0f4e3a1b9d7c8e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b"

	fmt.Printf("fleet: %d hosts x %d containers = %d containers; image %.1f GiB, working set %.0f%% = %.1f MiB in %d chunks of %d KiB\n",
		*hosts, *containers, *hosts**containers, *imageGiB, *wsFrac*100, float64(ws)/(1<<20), nChunks, *chunk>>10)
	fmt.Printf("links: NIC %.0f Gbit/s each way, registry egress %.0f Gbit/s, RTT %v between hosts, %v to the registry\n\n",
		*nicGbit, *regGbit, *rtt, *regRTT)
	fmt.Println("| mode | registry egress | x working set | max host upload | mean host upload | longest path (hops) | time to serve |")
	fmt.Println("|---|---|---|---|---|---|---|")

	row := func(name string, egress int64, up []int64, hops int) {
		var maxUp, sumUp int64
		for _, u := range up {
			maxUp = max(maxUp, u)
			sumUp += u
		}
		t := max(float64(egress)/reg, float64(maxUp)/nic, float64(ws)/nic)
		lat := hop(*regRTT)
		if hops > 0 {
			lat += float64(hops) * hop(*rtt)
		}
		fmt.Printf("| %s | %.1f GiB | %.2fx | %.1f MiB | %.1f MiB | %d | %.2f s |\n", name, float64(egress)/(1<<30),
			float64(egress)/float64(ws), float64(maxUp)/(1<<20), float64(sumUp)/float64(len(up))/(1<<20), hops+1, t+lat)
	}

	// No P2P: every host fetches the working set from the registry.
	row("no P2P", int64(*hosts)*ws, make([]int64, *hosts), 0)

	// obd peer mode: one tree per chunk, from the chunk's rendezvous ranking.
	obd := func(fan int) ([]int64, int) {
		index := make(map[string]int, len(peers))
		for i, p := range peers {
			index[p] = i
		}
		up := make([]int64, *hosts)
		depth := 0
		for c := int64(0); c < nChunks; c++ {
			ranked := p2p.Rank(peers, p2p.ChunkKey(digest, c))
			// Children of rank r: ranks fan*r+1 .. fan*r+fan.
			for r, p := range ranked {
				kids := min(fan*r+fan, *hosts-1) - (fan*r + 1) + 1
				if kids > 0 {
					up[index[p]] += int64(kids) * int64(*chunk)
				}
			}
			if c == 0 { // every chunk's tree has the same shape
				depth = len(p2p.Upstream(ranked, ranked[len(ranked)-1], fan))
			}
		}
		return up, depth
	}
	up, depth := obd(*fanOut)
	row(fmt.Sprintf("obd peers, per-chunk trees (fanOut %d)", *fanOut), ws, up, depth)
	up, depth = obd(*hosts)
	row("obd peers, flat owners (fanOut >= hosts)", ws, up, depth)

	// DADI-style: one tree per blob; interior nodes send the whole working set
	// to each child.
	dup := make([]int64, *hosts)
	ddepth := 0
	for r := range dup {
		kids := min(*dadiFan*r+*dadiFan, *hosts-1) - (*dadiFan*r + 1) + 1
		if kids > 0 {
			dup[r] = int64(kids) * ws
		}
	}
	for n := *hosts - 1; n > 0; n = (n - 1) / *dadiFan {
		ddepth++
	}
	row(fmt.Sprintf("DADI-style tree per blob (fan-out %d)", *dadiFan), ws, dup, ddepth)

	// How even the per-chunk trees spread the upload.
	up, _ = obd(*fanOut)
	slices.Sort(up)
	fmt.Printf("\nobd per-chunk trees, host upload percentiles: p50 %.1f MiB, p99 %.1f MiB, max %.1f MiB (a DADI interior node: %.1f MiB)\n",
		float64(up[len(up)/2])/(1<<20), float64(up[len(up)*99/100])/(1<<20), float64(up[len(up)-1])/(1<<20),
		float64(int64(*dadiFan)*ws)/(1<<20))
	fmt.Printf("(simulated in %v)\n", time.Since(start).Round(time.Millisecond))
}
