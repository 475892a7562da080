package trace

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Mode is what the daemon does with a configured trace path (recordTracePath or the
// acceleration layer's trace file).
type Mode int

const (
	// ModeDisabled: the path does not exist.
	ModeDisabled Mode = iota
	// ModeRecord: the file exists and is empty; record and dump into it.
	ModeRecord
	// ModeReplayTrace: the file starts with a binary trace header; replay it.
	ModeReplayTrace
	// ModeReplayFileList: any other non-empty file is a list of paths to prefetch.
	ModeReplayFileList
)

func (m Mode) String() string {
	switch m {
	case ModeDisabled:
		return "disabled"
	case ModeRecord:
		return "record"
	case ModeReplayTrace:
		return "replay-trace"
	case ModeReplayFileList:
		return "replay-file-list"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Detect classifies the contents of a trace path of the given size the way the
// reference does (Prefetcher::detect_mode and new_prefetcher).
func Detect(r io.ReaderAt, size int64) (Mode, error) {
	if size == 0 {
		return ModeRecord, nil
	}
	if size < HeaderSize {
		return ModeReplayFileList, nil
	}
	var head [HeaderSize]byte
	if err := readFull(r, head[:], 0); err != nil {
		return 0, fmt.Errorf("trace: reading first %d bytes: %w", HeaderSize, err)
	}
	if IsTrace(head[:]) {
		return ModeReplayTrace, nil
	}
	return ModeReplayFileList, nil
}

// DetectMode classifies the file at path; a missing file is ModeDisabled.
func DetectMode(path string) (Mode, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ModeDisabled, nil
	}
	if err != nil {
		return 0, fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("trace: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("trace: %s is not a regular file (%s)", path, st.Mode().Type())
	}
	m, err := Detect(f, st.Size())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// ReadTraceFile reads and validates the binary trace at path.
func ReadTraceFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	recs, err := ReadTrace(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}
