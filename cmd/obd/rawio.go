package main

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawFile does positional I/O on a regular file with raw system calls, which
// the Go scheduler does not see. `zfile -x` keeps every P busy with 256 KiB
// preads and pwrites; through os.File, each call that outlasts a sysmon tick
// (20 µs, so nearly all of them) gets its P handed off to another thread and
// back (a futex wake-up, a spinning M parking again): about 4000 context
// switches and 30-60 ms of CPU for 512 MiB. A regular file's pread and pwrite
// take tens of microseconds, so holding the P meanwhile costs nothing. A short
// or failed raw call (EINTR included) is finished by os.File, which loops and
// returns the error as usual, naming the file.
type rawFile struct{ *os.File }

func (f rawFile) ReadAt(p []byte, off int64) (int, error) {
	n := rawPositional(f.File, unix.SYS_PREAD64, p, off)
	if n == len(p) {
		return n, nil
	}
	m, err := f.File.ReadAt(p[n:], off+int64(n))
	return n + m, err
}

func (f rawFile) WriteAt(p []byte, off int64) (int, error) {
	n := rawPositional(f.File, unix.SYS_PWRITE64, p, off)
	if n == len(p) {
		return n, nil
	}
	m, err := f.File.WriteAt(p[n:], off+int64(n))
	return n + m, err
}

// rawPositional issues one pread or pwrite and returns the bytes it moved (0 on
// any error: the caller retries the rest through os.File).
func rawPositional(f *os.File, trap uintptr, p []byte, off int64) int {
	if len(p) == 0 || off < 0 {
		return 0
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0
	}
	var n uintptr
	var errno unix.Errno
	// Control holds the descriptor open while the call runs.
	if rc.Control(func(fd uintptr) {
		n, _, errno = unix.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(off), 0, 0)
	}) != nil || errno != 0 {
		return 0
	}
	return int(n)
}
