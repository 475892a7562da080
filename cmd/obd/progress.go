package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress is the one progress meter of the long CLI commands (commit, convert,
// export, pull): a line on stderr, redrawn at most every 100 ms, drawn only when
// stderr is a terminal and -q/--quiet is not given. It is used from one goroutine
// at a time (remote.Pull serialises its callbacks).
type progress struct {
	out   io.Writer
	label string
	total int64 // 0: unknown
	n     int64
	start time.Time
	last  time.Time
	on    bool
}

func newProgress(label string, total int64, quiet bool) *progress {
	return &progress{out: os.Stderr, label: label, total: total, start: time.Now(),
		on: !quiet && term.IsTerminal(int(os.Stderr.Fd()))}
}

// add counts n more bytes done.
func (p *progress) add(n int) { p.set(p.n+int64(n), p.total) }

// set records that done of total bytes are done (a callback's view).
func (p *progress) set(done, total int64) {
	p.n, p.total = done, total
	if now := time.Now(); p.on && (now.Sub(p.last) >= 100*time.Millisecond || done == total) {
		p.last = now
		p.print()
	}
}

func (p *progress) print() {
	rate := humanBytes(uint64(float64(p.n) / max(time.Since(p.start).Seconds(), 1e-3)))
	if p.total <= 0 {
		fmt.Fprintf(p.out, "\r%s: %s %s/s   ", p.label, humanBytes(uint64(p.n)), rate)
		return
	}
	const width = 30
	f := min(float64(p.n)/float64(p.total), 1)
	bar := int(f * width)
	fmt.Fprintf(p.out, "\r%s: [%s%s] %3.0f%% %s/%s %s/s   ", p.label, strings.Repeat("=", bar), strings.Repeat(" ", width-bar),
		f*100, humanBytes(uint64(p.n)), humanBytes(uint64(p.total)), rate)
}

// done draws the final state and ends the line.
func (p *progress) done() {
	if p.on {
		p.print()
		fmt.Fprintln(p.out)
	}
}

type progressWriter struct {
	w io.Writer
	p *progress
}

func (pw progressWriter) Write(b []byte) (int, error) {
	n, err := pw.w.Write(b)
	pw.p.add(n)
	return n, err
}

// progressWriterAt counts what concurrent positional writes write.
type progressWriterAt struct {
	w  io.WriterAt
	p  *progress
	mu sync.Mutex
}

func (pw *progressWriterAt) WriteAt(b []byte, off int64) (int, error) {
	n, err := pw.w.WriteAt(b, off)
	pw.mu.Lock()
	pw.p.add(n)
	pw.mu.Unlock()
	return n, err
}

// writerAt counts what is written through it; w itself when nothing is drawn.
func (p *progress) writerAt(w io.WriterAt) io.WriterAt {
	if !p.on {
		return w
	}
	return &progressWriterAt{w: w, p: p}
}

// writer counts what is written through it.
func (p *progress) writer(w io.Writer) io.Writer { return progressWriter{w, p} }
