package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/obd-project/obd/internal/atomicfile"
)

// Temporary outputs of the offline commands. While one exists, SIGINT, SIGTERM and
// SIGHUP remove every temporary file before the process exits with 128+signal, so an
// interrupted command leaves no hidden ".NAME.tmp-*" behind. The handler is installed
// only while temporary files exist: the daemon's own signal handling is untouched.
var temps struct {
	sync.Mutex
	files map[string]struct{}
	sigc  chan os.Signal
}

// createTemp creates a temporary file next to dst (same file system, so the final
// rename is atomic) and tracks it for removal on a signal.
func createTemp(dst string) (*os.File, error) {
	temps.Lock()
	defer temps.Unlock()
	// The handler is in place before the file exists: a signal cannot kill the
	// process between the two and leave the file behind.
	if temps.sigc == nil {
		temps.sigc = make(chan os.Signal, 1)
		signal.Notify(temps.sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		go cleanupOnSignal(temps.sigc)
	}
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		if len(temps.files) == 0 {
			untrackLocked("")
		}
		return nil, err
	}
	if temps.files == nil {
		temps.files = map[string]struct{}{}
	}
	temps.files[f.Name()] = struct{}{}
	return f, nil
}

func cleanupOnSignal(c chan os.Signal) {
	sig, ok := <-c
	if !ok {
		return
	}
	temps.Lock() // held until exit: no rename completes after this
	for name := range temps.files {
		os.Remove(name)
	}
	fmt.Fprintf(os.Stderr, "obd: %v: stopped, temporary output removed\n", sig)
	code := 1
	if s, ok := sig.(syscall.Signal); ok {
		code = 128 + int(s)
	}
	os.Exit(code)
}

// untrackLocked forgets a temporary file; the last one uninstalls the handler.
func untrackLocked(name string) {
	delete(temps.files, name)
	if len(temps.files) == 0 && temps.sigc != nil {
		signal.Stop(temps.sigc)
		close(temps.sigc)
		temps.sigc = nil
	}
}

// removeTemp deletes a temporary file that will not be renamed into place.
func removeTemp(name string) {
	temps.Lock()
	defer temps.Unlock()
	os.Remove(name)
	untrackLocked(name)
}

// renameTemp moves a finished (synced) temporary file to dst. Without force it never
// replaces a file that appeared at dst meanwhile, like the reference tools' O_EXCL.
func renameTemp(tmp, dst string, force bool) error {
	temps.Lock()
	defer temps.Unlock()
	defer untrackLocked(tmp)
	var err error
	if force {
		err = atomicfile.Rename(tmp, dst)
	} else {
		err = atomicfile.RenameNoReplace(tmp, dst)
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("output %s exists (use -f/--force to replace it)", dst)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
