package convert

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

const (
	spoolChunk  = 1 << 20   // bytes per decompressed chunk
	spoolMemMax = 128 << 20 // chunks kept in memory before they spill to the file
)

// errSpoolClosed stops a producer whose reader has gone.
var errSpoolClosed = errors.New("convert: layer reader closed")

// spool carries one decompressed source layer from its producer (download,
// decompression and diff_id check, in its own goroutine) to the applier. Chunks
// stay in memory while the reader keeps up and spill to a file when it does not,
// so the next layer is decompressed in full, on the other core, while this one is
// applied and committed: decompression is the longest stage of a conversion and
// cannot be split within one gzip stream.
type spool struct {
	path   string // spill file, created on first need
	diffID string // sha256 the stream must have
	memMax int    // bytes of chunks kept in memory before they spill

	mu      sync.Mutex
	cond    sync.Cond
	queue   []spoolPart // written, not yet read, in order
	free    [][]byte    // read chunks, for reuse
	memUsed int
	file    *os.File
	fileEnd int64
	done    bool  // producer finished
	err     error // producer's error, after the data before it
	closed  bool  // reader finished
}

// spoolPart is a piece of the stream: a chunk in memory (mem[pos:]) or n bytes
// in the file at off.
type spoolPart struct {
	mem []byte
	pos int
	off int64
	n   int
}

func newSpool(path, diffID string) *spool {
	s := &spool{path: path, diffID: diffID, memMax: spoolMemMax}
	s.cond.L = &s.mu
	return s
}

// fill runs the producer: it reads the layer tar from r to its end, checks its
// sha256 against s.diffID and closes r. Errors reach the reader after the data
// read before them.
func (s *spool) fill(r io.ReadCloser) {
	defer r.Close()
	h := sha256.New()
	var err error
	for err == nil {
		buf := s.chunk()
		var n int
		n, err = io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			if perr := s.put(buf[:n]); perr != nil {
				err = perr
				break
			}
		}
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != s.diffID {
			err = fmt.Errorf("uncompressed tar has digest %s, the image config says %s", got, s.diffID)
		}
	}
	s.finish(err)
}

// finish ends the stream with err (nil: EOF).
func (s *spool) finish(err error) {
	s.mu.Lock()
	s.done, s.err = true, err
	s.cond.Broadcast()
	s.release()
	s.mu.Unlock()
}

// chunk returns a buffer of spoolChunk bytes.
func (s *spool) chunk() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.free); n > 0 {
		b := s.free[n-1]
		s.free = s.free[:n-1]
		return b[:spoolChunk]
	}
	return make([]byte, spoolChunk)
}

// put appends b, which the spool owns from now on.
func (s *spool) put(b []byte) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errSpoolClosed
	}
	if s.memUsed+len(b) <= s.memMax {
		s.queue = append(s.queue, spoolPart{mem: b})
		s.memUsed += len(b)
		s.cond.Broadcast()
		s.mu.Unlock()
		return nil
	}
	if s.file == nil {
		f, err := os.Create(s.path)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		s.file = f
	}
	f, off := s.file, s.fileEnd
	s.fileEnd += int64(len(b))
	s.mu.Unlock()
	// The file only grows and only this goroutine writes it: no lock needed.
	if _, err := f.WriteAt(b, off); err != nil {
		return fmt.Errorf("spooling the layer tar: %w", err)
	}
	s.mu.Lock()
	s.queue = append(s.queue, spoolPart{off: off, n: len(b)})
	s.free = append(s.free, b)
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// Read returns the stream's bytes in order, waiting for the producer.
func (s *spool) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	for len(s.queue) == 0 && !s.done {
		s.cond.Wait()
	}
	if len(s.queue) == 0 {
		err := s.err
		s.mu.Unlock()
		if err == nil {
			err = io.EOF
		}
		return 0, err
	}
	part, f := s.queue[0], s.file
	s.mu.Unlock()
	// Only the reader takes parts off the queue: part stays valid unlocked.
	var n int
	if part.mem != nil {
		n = copy(p, part.mem[part.pos:])
	} else {
		var err error
		if n, err = f.ReadAt(p[:min(len(p), part.n)], part.off); n == 0 {
			return 0, fmt.Errorf("reading the spooled layer tar: %w", err)
		}
	}
	s.mu.Lock()
	if head := &s.queue[0]; head.mem != nil {
		if head.pos += n; head.pos == len(head.mem) {
			s.memUsed -= len(head.mem)
			s.free = append(s.free, head.mem[:spoolChunk])
			s.queue = s.queue[1:]
		}
	} else if head.off, head.n = head.off+int64(n), head.n-n; head.n == 0 {
		s.queue = s.queue[1:]
	}
	s.mu.Unlock()
	return n, nil
}

// Close ends reading; the producer stops at its next chunk.
func (s *spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.queue, s.free = nil, nil
	s.cond.Broadcast()
	s.release()
	return nil
}

// release removes the spill file once both sides are done. Called with mu held.
func (s *spool) release() {
	if s.done && s.closed && s.file != nil {
		s.file.Close()
		os.Remove(s.path)
		s.file = nil
	}
}
