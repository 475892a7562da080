package lsmt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A writable layer has one user at a time: two writers appending to the same data and
// index files interleave their records and one of them loses its writes. Create and
// OpenWritable take an exclusive flock on each file of the layer, held until the files
// are closed (Close, CloseSeal, or the process ending). flock locks belong to the open
// file, so a second open of the same layer conflicts also within one process (the same
// upper attached twice by one daemon).

// holderXattr names the extended attribute where the lock holder leaves a note (its pid
// and, for a daemon, the device serving the layer) for the error a second opener gets.
const holderXattr = "user.obd.holder"

// InUseError is returned when a writable layer's file is locked by another opener.
type InUseError struct {
	Path string
	PID  int    // the holder's pid, 0 if unknown
	Cmd  string // the holder's command line, if readable
	Note string // what the holder says it is doing (e.g. "device 3"), if it left a note
}

func (e *InUseError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lsmt: %s is in use by ", e.Path)
	switch {
	case e.PID == os.Getpid():
		fmt.Fprintf(&b, "pid %d (this process)", e.PID)
	case e.PID > 0:
		fmt.Fprintf(&b, "pid %d", e.PID)
	default:
		b.WriteString("another process")
	}
	if e.Cmd != "" && e.PID != os.Getpid() {
		fmt.Fprintf(&b, " (%s)", e.Cmd)
	}
	if e.Note != "" {
		fmt.Fprintf(&b, ", %s", e.Note)
	}
	b.WriteString(": a writable layer is served or edited by one user at a time (detach it or wait for that command)")
	return b.String()
}

// lockLayerFile takes the exclusive lock on one file of a writable layer, failing at
// once with an *InUseError when another opener holds it. File systems without flock
// support (ENOLCK, EOPNOTSUPP) are used unlocked.
func lockLayerFile(f *os.File) error {
	if f == nil {
		return nil
	}
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EWOULDBLOCK):
		return holderOf(f)
	case errors.Is(err, unix.ENOLCK), errors.Is(err, unix.EOPNOTSUPP):
		return nil
	default:
		return fmt.Errorf("lsmt: locking %s: %w", f.Name(), err)
	}
}

// lockLayer locks the data file, then the index file (nil for a sparse layer).
func lockLayer(data, index *os.File) error {
	if err := lockLayerFile(data); err != nil {
		return err
	}
	if err := lockLayerFile(index); err != nil {
		unlockLayer(data, nil)
		return err
	}
	return nil
}

// unlockLayer drops the locks of a layer that failed to open, so that its files,
// even if the caller keeps them open, do not block the next opener.
func unlockLayer(data, index *os.File) {
	for _, f := range []*os.File{data, index} {
		if f != nil {
			_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		}
	}
}

func unlockOnError(err *error, data, index *os.File) {
	if *err != nil {
		unlockLayer(data, index)
	}
}

// LockedBy reports who holds the lock on the writable layer file at path: nil when
// nobody does (or the file does not exist or cannot be locked), else an *InUseError.
// It lets a command refuse to replace a layer that is being served.
func LockedBy(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return holderOf(f)
		}
		return nil
	}
	return nil // closing f releases the probe lock
}

// SetHolderNote leaves a note on the layer's data file, shown to whoever finds the
// layer locked (e.g. "device 3"). Best effort: file systems without user extended
// attributes show only the holder's pid and command.
func (w *Writable) SetHolderNote(note string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	_ = unix.Fsetxattr(int(w.data.Fd()), holderXattr, []byte(strconv.Itoa(os.Getpid())+" "+note), 0)
}

// holderOf describes the holder of f's flock: its pid from /proc/locks (matched by
// device and inode), its command line, and its note if the note is its own.
func holderOf(f *os.File) *InUseError {
	e := &InUseError{Path: f.Name()}
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return e
	}
	e.PID = flockHolder(unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	if e.PID > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", e.PID)); err == nil {
			e.Cmd = strings.TrimSpace(string(bytes.ReplaceAll(bytes.TrimRight(b, "\x00"), []byte{0}, []byte{' '})))
		}
	}
	buf := make([]byte, 256)
	if n, err := unix.Fgetxattr(int(f.Fd()), holderXattr, buf); err == nil {
		pid, note, _ := strings.Cut(string(buf[:n]), " ")
		if p, err := strconv.Atoi(pid); err == nil && p == e.PID && p > 0 {
			e.Note = note
		}
	}
	return e
}

// flockHolder finds the pid holding a FLOCK on the inode in /proc/locks, whose lines
// read "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (major:minor in hex).
func flockHolder(major, minor uint32, ino uint64) int {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", major, minor, ino)
	inoSuffix := ":" + strconv.FormatUint(ino, 10)
	sameIno := 0 // some file systems (btrfs, overlayfs) report another device number
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" { // "->" marks a waiter
			continue
		}
		pid, _ := strconv.Atoi(fields[4])
		if fields[5] == want {
			return pid
		}
		if strings.HasSuffix(fields[5], inoSuffix) {
			sameIno = pid
		}
	}
	return sameIno
}
