package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
	"golang.org/x/term"
)

// atomicFile is an output file written under a temporary name and renamed over the
// destination only when complete, so a failed command never leaves a half-written layer.
type atomicFile struct {
	*os.File
	dst string
}

func createAtomic(dst string) (*atomicFile, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return nil, err
	}
	return &atomicFile{File: f, dst: dst}, nil
}

// commit syncs and renames the file into place.
func (a *atomicFile) commit() error {
	if err := a.Sync(); err != nil {
		a.abort()
		return fmt.Errorf("%s: sync: %w", a.dst, err)
	}
	if err := a.Close(); err != nil {
		os.Remove(a.Name())
		return fmt.Errorf("%s: %w", a.dst, err)
	}
	if err := os.Chmod(a.Name(), 0o644); err != nil {
		os.Remove(a.Name())
		return err
	}
	if err := os.Rename(a.Name(), a.dst); err != nil {
		os.Remove(a.Name())
		return err
	}
	return nil
}

func (a *atomicFile) abort() {
	a.Close()
	os.Remove(a.Name())
}

// layerOutput says how a sealed layer is encoded on its way to disk.
type layerOutput struct {
	compress  zfile.Algorithm // 0: not compressed
	blockSize int
	tar       bool
}

// writeLayer commits src to the file dst: LSMT -> [ZFile] -> [tar], written atomically.
func writeLayer(dst string, src lsmt.Source, opts lsmt.CommitOptions, out layerOutput, quiet bool) (err error) {
	f, err := createAtomic(dst)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.abort()
		}
	}()
	var total uint64
	for _, s := range src.Segments {
		if s.Valid() && !s.Zeroed {
			total += uint64(s.Length) * lsmt.SectorSize
		}
	}
	prog := newProgress("commit "+filepath.Base(dst), int64(total), quiet)
	defer prog.done()

	var w io.Writer = f
	var closers []io.Closer
	if out.tar {
		tw, err := tarwrap.NewStreamWriter(f)
		if err != nil {
			return err
		}
		w = tw
		closers = append(closers, tw)
	}
	if out.compress != 0 {
		zw, err := zfile.NewWriter(w, zfile.Options{Algorithm: out.compress, BlockSize: out.blockSize})
		if err != nil {
			return err
		}
		w = zw
		closers = append(closers, zw)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := lsmt.Commit(prog.writer(bw), src, opts); err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	// Innermost first: the compressor flushes into the tar writer before it closes.
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i].Close(); err != nil {
			return fmt.Errorf("%s: %w", dst, err)
		}
	}
	return f.commit()
}

// progress prints a one-line progress meter on stderr when it is a terminal.
type progress struct {
	label string
	total int64
	n     int64
	start time.Time
	last  time.Time
	on    bool
}

func newProgress(label string, total int64, quiet bool) *progress {
	return &progress{label: label, total: total, start: time.Now(), on: !quiet && term.IsTerminal(int(os.Stderr.Fd()))}
}

func (p *progress) add(n int) {
	p.n += int64(n)
	if p.on && time.Since(p.last) > 200*time.Millisecond {
		p.last = time.Now()
		p.print()
	}
}

func (p *progress) print() {
	secs := time.Since(p.start).Seconds()
	rate := float64(p.n) / (1 << 20) / max(secs, 1e-3)
	if p.total > 0 {
		fmt.Fprintf(os.Stderr, "\r%s: %d/%d MiB (%.0f MiB/s)   ", p.label, p.n>>20, p.total>>20, rate)
	} else {
		fmt.Fprintf(os.Stderr, "\r%s: %d MiB (%.0f MiB/s)   ", p.label, p.n>>20, rate)
	}
}

func (p *progress) done() {
	if p.on {
		p.print()
		fmt.Fprintln(os.Stderr)
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

func (p *progress) writer(w io.Writer) io.Writer { return progressWriter{w, p} }
