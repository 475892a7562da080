package trace

import (
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// MaxFileListSize is the largest file list the reference accepts.
const MaxFileListSize = 64 << 10

// FileList is a parsed dynamic-prefetch list: the files (and directories to walk)
// whose data, located by FIEMAP in the merged image's file system, is read ahead.
type FileList struct {
	Entries []FileEntry
	// Skipped lists the non-blank lines that were ignored, with why, for the log;
	// the reference ignores the same lines silently.
	Skipped []SkippedLine
}

// FileEntry is one path of a file list.
type FileEntry struct {
	Path string // absolute and clean, e.g. "/usr/bin/python3"
	Walk bool   // the line ended in "/" or "/*": prefetch every file under Path
}

// SkippedLine is a file-list line that names no usable path.
type SkippedLine struct {
	Line   int    // 1-based line number
	Text   string // the line, cut to 256 bytes
	Reason string
}

// ParseFileList parses a file list: one path per line, blank lines ignored. It follows
// the reference's rules — leading spaces and slashes are trimmed (so relative paths
// are taken from the root), names may only use [A-Za-z0-9_.-], components are
// separated by single slashes, and a trailing "/" asks for a directory walk — with
// these differences, all more lenient or safer:
//   - trailing spaces, tabs and a CR (CRLF files) are trimmed; the reference would
//     reject such lines;
//   - a trailing "/*" also means a directory walk (the reference's regex rejects
//     every line containing "*", although its walker checks for it);
//   - a path that resolves to the root ("/", ".", "a/..") is skipped rather than
//     walking the whole image.
//
// Lines that do not qualify are reported in Skipped, not as an error: the list is a
// hint. The only error is a list larger than MaxFileListSize.
func ParseFileList(data []byte) (*FileList, error) {
	if len(data) > MaxFileListSize {
		return nil, fmt.Errorf("trace: file list is %d bytes, more than the %d-byte limit", len(data), MaxFileListSize)
	}
	fl := &FileList{}
	for i, line := range strings.Split(string(data), "\n") {
		e, reason, ok := parseFileListLine(line)
		if ok {
			fl.Entries = append(fl.Entries, e)
		} else if reason != "" {
			text := line
			if len(text) > 256 {
				text = text[:256]
			}
			fl.Skipped = append(fl.Skipped, SkippedLine{Line: i + 1, Text: text, Reason: reason})
		}
	}
	return fl, nil
}

// parseFileListLine returns the entry of one line, or why it has none ("" for a
// blank line).
func parseFileListLine(line string) (FileEntry, string, bool) {
	t := strings.Trim(strings.TrimSuffix(line, "\r"), " \t")
	if t == "" {
		return FileEntry{}, "", false
	}
	rest := strings.TrimLeft(t, "/")
	var walk bool
	switch {
	case rest == "*" || strings.HasSuffix(rest, "/*"):
		walk, rest = true, strings.TrimSuffix(rest, "*")
	case strings.HasSuffix(rest, "/"):
		walk = true
	}
	rest = strings.TrimSuffix(rest, "/")
	if rest == "" {
		return FileEntry{}, "names the root directory; the whole image is not prefetched", false
	}
	for _, comp := range strings.Split(rest, "/") {
		if comp == "" {
			return FileEntry{}, "empty path component (\"//\")", false
		}
		for j := 0; j < len(comp); j++ {
			if c := comp[j]; !pathByte(c) {
				what := fmt.Sprintf("character %q", rune(c))
				if c >= 0x80 {
					what = fmt.Sprintf("byte %#02x", c)
				}
				return FileEntry{}, fmt.Sprintf("%s in %q is not allowed (names may use A-Z a-z 0-9 _ . -)", what, comp), false
			}
		}
	}
	p := path.Clean("/" + rest)
	if p == "/" {
		return FileEntry{}, "resolves to the root directory; the whole image is not prefetched", false
	}
	return FileEntry{Path: p, Walk: walk}, "", true
}

func pathByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

// ReadFileList parses the file list of size bytes in r, refusing a size above
// MaxFileListSize before reading anything.
func ReadFileList(r io.ReaderAt, size int64) (*FileList, error) {
	if size < 0 || size > MaxFileListSize {
		return nil, fmt.Errorf("trace: file list is %d bytes, more than the %d-byte limit", size, MaxFileListSize)
	}
	b := make([]byte, size)
	if err := readFull(r, b, 0); err != nil {
		return nil, fmt.Errorf("trace: reading file list: %w", err)
	}
	return ParseFileList(b)
}

// ReadFileListFile parses the file list at path.
func ReadFileListFile(name string) (*FileList, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	fl, err := ReadFileList(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return fl, nil
}

// Extent is a FIEMAP extent of a file inside the merged image: Length bytes at
// Physical (byte offsets of the image).
type Extent struct {
	Physical int64
	Length   int64
}

// SectorSize is the LSMT addressing unit that caps a file's last extent.
const SectorSize = 512

// FileExtentRecords turns a file's extents into replay records the way the reference
// dynamic prefetcher does: at most round_up(fileSize, 512) bytes in total are taken
// from the extents in order, sliced into reads of at most MaxIOSize. The records read
// the merged image, so their layer is 0 and Replay must be given the merged image as
// its only layer.
func FileExtentRecords(fileSize int64, extents []Extent) []Record {
	if fileSize <= 0 {
		return nil
	}
	left := fileSize
	if left <= (1<<63-1)-(SectorSize-1) {
		left = (left + SectorSize - 1) / SectorSize * SectorSize
	}
	var recs []Record
	for _, e := range extents {
		if left == 0 {
			break
		}
		if e.Length <= 0 || e.Physical < 0 {
			continue
		}
		n := min(e.Length, left)
		left -= n
		for off := e.Physical; n > 0; {
			c := min(n, MaxIOSize)
			if off > (1<<63-1)-c {
				break
			}
			recs = append(recs, Record{Op: OpRead, Layer: 0, Count: uint64(c), Offset: off})
			off += c
			n -= c
		}
	}
	return recs
}
