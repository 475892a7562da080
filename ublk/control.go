package ublk

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the ublk driver's control device.
const ControlPath = "/dev/ublk-control"

// Available reports whether the ublk driver is loaded (its control device exists).
func Available() bool {
	_, err := os.Stat(ControlPath)
	return err == nil
}

// controller sends control commands to /dev/ublk-control through an SQE128 ring
// (the only way the driver accepts them). Commands are serialised: the driver
// punts each one to an io-wq worker and completes it later, and some block
// (START_DEV, DEL_DEV), so one in flight at a time keeps the bookkeeping trivial.
type controller struct {
	mu       sync.Mutex
	fd       int
	ring     *ring
	scratch  []byte // anonymous mmap: the kernel reads/writes it after submit, so it must not move
	seq      uint64
	legacy   bool   // kernel predates ioctl-encoded opcodes: use bare command numbers
	features uint64 // GET_FEATURES, or legacyFeatures on kernels without it
}

func openController() (*controller, error) {
	fd, err := unix.Open(ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ublk: open %s: %w%s", ControlPath, err, hintFor(err))
	}
	c := &controller{fd: fd}
	if c.ring, err = newRing(4, ioringSetupSQE128); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ublk: control ring: %w%s", err, hintFor(err))
	}
	if c.scratch, err = unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		c.close()
		return nil, fmt.Errorf("ublk: control buffer: %w", err)
	}
	if err := c.probeFeatures(); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// probeFeatures asks GET_FEATURES (6.5+). Older kernels reject it; then we
// assume the 6.1 feature set and the legacy opcodes (6.4 understands both).
func (c *controller) probeFeatures() error {
	f, err := c.getFeatures()
	if err == nil {
		c.features = f
		return nil
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("ublk: GET_FEATURES: %w (ublk needs CAP_SYS_ADMIN)", err)
	}
	c.legacy = true
	c.features = legacyFeatures
	return nil
}

func (c *controller) close() {
	if c.ring != nil {
		c.ring.close()
	}
	if c.scratch != nil {
		unix.Munmap(c.scratch)
	}
	unix.Close(c.fd)
}

// cmd issues one control command for device id with a len-byte argument buffer
// (the scratch page) and inline argument data, and waits for its completion.
func (c *controller) cmd(nr uint32, id uint32, bufLen int, data uint64) error {
	s, err := c.ring.getSQE()
	if err != nil {
		return err
	}
	c.seq++
	s.Opcode = ioringOpURingCmd
	s.Fd = int32(c.fd)
	s.Off = uint64(ctrlOp(nr, c.legacy)) // cmd_op; __pad1 stays 0
	s.UserData = c.seq
	cc := (*ctrlCmd)(cmdArea(s))
	cc.DevID = id
	cc.QueueID = noQueue
	cc.Data = data
	if bufLen > 0 {
		cc.Addr = uint64(uintptr(unsafe.Pointer(&c.scratch[0])))
		cc.Len = uint16(bufLen)
	}
	var res int32
	onThrowawayThread(func() {
		for got := false; !got; {
			if err = c.ring.submit(1); err != nil {
				return
			}
			c.ring.reap(func(q cqe) {
				if q.UserData == c.seq {
					res, got = q.Res, true
				}
			})
		}
	})
	if err != nil {
		return err
	}
	if res < 0 {
		return unix.Errno(-res)
	}
	return nil
}

// onThrowawayThread runs f on a new OS thread that exits afterwards. The
// driver punts every control command to an io-wq worker of the submitting
// thread, and the last worker of a thread's io-wq lives as long as that thread:
// submitted from whatever Go thread ran an attach (many of which then became
// queue threads), control commands left about one idle iou-wrk thread per
// thread of the daemon (~460 of ~1000 threads with 256 devices, in the VM).
func onThrowawayThread(f func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread, and its io-wq, exit with this goroutine
		f()
		close(done)
	}()
	<-done
}

var cmdNames = map[uint32]string{
	nrGetQueueAffinity: "GET_QUEUE_AFFINITY", nrGetDevInfo: "GET_DEV_INFO", nrAddDev: "ADD_DEV", nrDelDev: "DEL_DEV",
	nrStartDev: "START_DEV", nrStopDev: "STOP_DEV", nrSetParams: "SET_PARAMS", nrGetParams: "GET_PARAMS",
	nrStartUserRecovery: "START_USER_RECOVERY", nrEndUserRecovery: "END_USER_RECOVERY", nrGetFeatures: "GET_FEATURES",
	nrDelDevAsync: "DEL_DEV_ASYNC",
}

// do runs cmd under the lock and names the command and device in errors.
func (c *controller) do(nr uint32, id uint32, bufLen int, data uint64, in func(buf []byte), out func(buf []byte)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.scratch[:bufLen])
	if in != nil {
		in(c.scratch[:bufLen])
	}
	if err := c.cmd(nr, id, bufLen, data); err != nil {
		return &CmdError{Cmd: cmdNames[nr], ID: id, Err: err}
	}
	if out != nil {
		out(c.scratch[:bufLen])
	}
	return nil
}

// CmdError is a failed control command.
type CmdError struct {
	Cmd string
	ID  uint32
	Err error
}

func (e *CmdError) Error() string {
	if e.ID == autoDevID {
		return fmt.Sprintf("ublk: %s: %v%s", e.Cmd, e.Err, hintFor(e.Err))
	}
	return fmt.Sprintf("ublk: %s (device %d): %v%s", e.Cmd, e.ID, e.Err, hintFor(e.Err))
}

func (e *CmdError) Unwrap() error { return e.Err }

func hintFor(err error) string {
	switch {
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		return " (open file limit reached: raise RLIMIT_NOFILE / fs.file-max)"
	case errors.Is(err, unix.EPERM):
		return " (needs CAP_SYS_ADMIN)"
	}
	return ""
}

// withHint adds hintFor(err) to err unless it is already there.
func withHint(err error) error {
	h := hintFor(err)
	if h == "" || strings.Contains(err.Error(), h) {
		return err
	}
	return fmt.Errorf("%w%s", err, h)
}

func asStruct[T any](b []byte) *T { return (*T)(unsafe.Pointer(&b[0])) }

func (c *controller) getFeatures() (uint64, error) {
	var f uint64
	err := c.do(nrGetFeatures, 0, 8, 0, nil, func(b []byte) { f = *asStruct[uint64](b) }) // len must be exactly 8
	return f, err
}

// addDev creates a device from info (DevID autoDevID lets the kernel choose) and
// returns what the kernel made of it: id, negotiated flags, clamped sizes.
func (c *controller) addDev(info devInfo) (devInfo, error) {
	err := c.do(nrAddDev, info.DevID, int(unsafe.Sizeof(info)), 0,
		func(b []byte) { *asStruct[devInfo](b) = info },
		func(b []byte) { info = *asStruct[devInfo](b) })
	if errors.Is(err, unix.EACCES) {
		err = fmt.Errorf("%w (device limit reached? see /sys/module/ublk_drv/parameters/ublks_max)", err)
	}
	return info, err
}

func (c *controller) getDevInfo(id uint32) (devInfo, error) {
	var info devInfo
	err := c.do(nrGetDevInfo, id, int(unsafe.Sizeof(info)), 0, nil, func(b []byte) { info = *asStruct[devInfo](b) })
	return info, err
}

func (c *controller) setParams(id uint32, p params) error {
	p.Len = uint32(unsafe.Sizeof(p))
	return c.do(nrSetParams, id, int(p.Len), 0, func(b []byte) { *asStruct[params](b) = p }, nil)
}

func (c *controller) getParams(id uint32) (params, error) {
	p := params{Len: uint32(unsafe.Sizeof(params{}))}
	err := c.do(nrGetParams, id, int(p.Len), 0, func(b []byte) { *asStruct[params](b) = p },
		func(b []byte) { p = *asStruct[params](b) })
	return p, err
}

// getQueueAffinity returns the CPUs blk-mq maps to queue qid.
func (c *controller) getQueueAffinity(id uint32, qid int) (unix.CPUSet, error) {
	var set unix.CPUSet
	n := int(unsafe.Sizeof(set)) // a multiple of 8, >= nr_cpu_ids/8
	err := c.do(nrGetQueueAffinity, id, n, uint64(qid), nil, func(b []byte) { set = *asStruct[unix.CPUSet](b) })
	return set, err
}

// startDev waits (in the kernel) until every tag of every queue has a FETCH
// pending, then creates /dev/ublkbN. data[0] is the serving process.
func (c *controller) startDev(id uint32) error {
	return c.do(nrStartDev, id, 0, uint64(os.Getpid()), nil, nil)
}

func (c *controller) stopDev(id uint32) error { return c.do(nrStopDev, id, 0, 0, nil, nil) }

// delDev removes the device. DEL_DEV_ASYNC (6.9+) does not wait for the last
// reference to the id to go away; older kernels get the waiting DEL_DEV.
func (c *controller) delDev(id uint32) error {
	if !c.legacy {
		err := c.do(nrDelDevAsync, id, 0, 0, nil, nil)
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.Errno(524)) { // ENOTSUPP
			return err
		}
	}
	return c.do(nrDelDev, id, 0, 0, nil, nil)
}

func (c *controller) startUserRecovery(id uint32) error {
	return c.do(nrStartUserRecovery, id, 0, 0, nil, nil)
}

func (c *controller) endUserRecovery(id uint32) error {
	return c.do(nrEndUserRecovery, id, 0, uint64(os.Getpid()), nil, nil)
}
