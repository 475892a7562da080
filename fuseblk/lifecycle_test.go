package fuseblk

import (
	"bytes"
	"crypto/rand"
	"errors"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// asNobody runs a shell command as uid/gid 65534 with no supplementary groups.
func asNobody(script string) (string, error) {
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestOtherUsersCannotOpen: a device mounted in a directory every user can enter
// is still owner-only: another user can neither write nor read it (the kernel
// enforces the mode with default_permissions), while root can.
func TestOtherUsersCannotOpen(t *testing.T) {
	requireRoot(t)
	for _, readOnly := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "world")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
			os.Chmod(d, 0o755) // t.TempDir's own levels are 0700
		}
		tgt := newMemTarget(1 << 20)
		m, err := Mount(dir, "disk", tgt, &Options{ReadOnly: readOnly})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		st, err := os.Stat(m.Path())
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if readOnly {
			want = 0o400
		}
		if st.Mode().Perm() != want || st.Sys().(*syscall.Stat_t).Uid != uint32(os.Getuid()) {
			t.Errorf("read-only %v: mode %v uid %d, want %v owned by us", readOnly, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, want)
		}
		if out, err := asNobody("test -x " + dir + " && printf PWNED | dd of=" + m.Path() + " conv=notrunc"); err == nil {
			t.Errorf("read-only %v: uid 65534 wrote the device: %s", readOnly, out)
		}
		if out, err := asNobody("dd if=" + m.Path() + " of=/dev/null count=1"); err == nil {
			t.Errorf("read-only %v: uid 65534 read the device: %s", readOnly, out)
		}
		if got := tgt.bytes(0, 5); !bytes.Equal(got, make([]byte, 5)) {
			t.Errorf("read-only %v: device bytes %q after the other user's attempt", readOnly, got)
		}
		// The owner (root: the loop driver, mount) still opens it.
		f, err := os.Open(m.Path())
		if err != nil {
			t.Fatalf("root open: %v", err)
		}
		f.Close()
	}
}

// TestGoFuseLogsGoThroughZap: go-fuse's own log lines (here its request debug
// output) reach the mount's zap logger at debug level, none the standard logger
// (stderr), where its "trySplice" messages used to appear.
func TestGoFuseLogsGoThroughZap(t *testing.T) {
	requireRoot(t)
	var std bytes.Buffer
	log.SetOutput(&std)
	defer log.SetOutput(os.Stderr)
	core, logs := observer.New(zapcore.DebugLevel)
	m := mountT(t, newMemTarget(1<<20), &Options{Debug: true, Logger: zap.New(core)})
	if _, err := os.ReadFile(m.Path()); err != nil {
		t.Fatal(err)
	}
	if logs.Len() == 0 {
		t.Fatal("no go-fuse debug line reached the zap logger")
	}
	for _, e := range logs.All() {
		if e.Level != zapcore.DebugLevel {
			t.Fatalf("go-fuse line at %v: %q", e.Level, e.Message)
		}
	}
	if std.Len() > 0 {
		t.Fatalf("go-fuse wrote to the standard logger:\n%s", std.String())
	}
}

// waitUsers polls m.Users until ok accepts it: releases reach the server
// asynchronously after close(2) and umount.
func waitUsers(t *testing.T, m *Mounted, what string, ok func([]string) bool) []string {
	t.Helper()
	var u []string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if u = m.Users(); ok(u) {
			return u
		}
	}
	t.Fatalf("users %q: want %s", u, what)
	return nil
}

func contains(sub string) func([]string) bool {
	return func(u []string) bool { return strings.Contains(strings.Join(u, "; "), sub) }
}

// TestUsers: an open file, a plain losetup and a mounted loop device each count
// as users, named; after they let go, nobody uses the device.
func TestUsers(t *testing.T) {
	requireRoot(t, "losetup", "mkfs.ext4", "mount", "umount")
	ctx := testCtx(t, 2*time.Minute)
	m := mountT(t, newMemTarget(imageSize), nil)
	none := func(u []string) bool { return len(u) == 0 }
	if u := m.Users(); len(u) != 0 {
		t.Fatalf("fresh mount: users %q", u)
	}
	f, err := os.Open(m.Path())
	if err != nil {
		t.Fatal(err)
	}
	waitUsers(t, m, "our pid", contains("open by pid "+strconv.Itoa(os.Getpid())))
	f.Close()
	waitUsers(t, m, "none after close", none)

	dev := losetup(t, ctx, m.Path())
	waitUsers(t, m, "the plain loop device", contains(dev+" is attached"))
	run(t, ctx, "mkfs.ext4", "-q", "-F", dev)
	mnt := tempMount(t)
	run(t, ctx, "mount", dev, mnt)
	waitUsers(t, m, "the mounted loop device", contains(dev+" mounted at "+mnt))
	run(t, ctx, "umount", mnt)
	run(t, ctx, "losetup", "-d", dev)
	waitUsers(t, m, "none after losetup -d", none)
}

// TestForceCloseWhileMounted: ForceClose of a device whose ext4 is mounted syncs
// that file system into the Target first (a file written without fsync is in the
// Target afterwards), frees the mount point at once (no ENOTCONN), and the ext4
// above keeps working until it is unmounted.
func TestForceCloseWhileMounted(t *testing.T) {
	requireRoot(t, "losetup", "mkfs.ext4", "mount", "umount")
	ctx := testCtx(t, 2*time.Minute)
	tgt := newMemTarget(imageSize)
	dir := t.TempDir()
	m, err := Mount(dir, "disk", tgt, nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := losetup(t, ctx, m.Path())
	run(t, ctx, "mkfs.ext4", "-q", "-F", dev)
	mnt := tempMount(t)
	run(t, ctx, "mount", dev, mnt)
	payload := make([]byte, 64<<10)
	rand.Read(payload)
	if err := os.WriteFile(filepath.Join(mnt, "unsynced"), payload, 0o644); err != nil {
		t.Fatal(err)
	}
	within(t, ctx, "ForceClose", func() {
		if err := m.ForceClose(); err != nil {
			t.Fatalf("ForceClose: %v", err)
		}
	})
	if !bytes.Contains(tgt.bytes(0, imageSize), payload) {
		t.Error("the file written before ForceClose is not in the Target: the ext4 was not synced")
	}
	if _, ok, _ := mountAt(dir); ok {
		t.Error("FUSE mount still in the tree after ForceClose")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Errorf("mount point after ForceClose: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "unsynced")); err != nil || !bytes.Equal(b, payload) {
		t.Errorf("ext4 above after ForceClose: %v", err)
	}
	run(t, ctx, "umount", mnt)
	if err := m.Close(); err != nil {
		t.Errorf("Close after ForceClose: %v", err)
	}
	if _, err := os.Stat("/sys/block/" + filepath.Base(dev) + "/loop/backing_file"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still bound after its ext4 was unmounted: %v", dev, err)
	}
}
