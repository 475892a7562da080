package ublk

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/internal/proc"
	"golang.org/x/sys/unix"
)

// Device is a ublk device served by this process.
type Device struct {
	ctrl   *controller
	info   devInfo
	cdevFd int
	queues []*queue
	exited chan struct{} // closed once every queue thread has stopped

	started bool // START_DEV or END_USER_RECOVERY succeeded: STOP_DEV aborts the queues

	closeOnce sync.Once
	closeErr  error
}

// New creates a ublk device serving t and returns once /dev/ublkbN exists.
func New(t blockdev.Target, opts Options) (*Device, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	be := newBackend(t)
	if be.size < 512 {
		return nil, fmt.Errorf("ublk: target size %d, want at least 512 bytes", be.size)
	}
	if err := checkThreadBudget(opts.Queues); err != nil {
		return nil, err
	}
	c, err := openController()
	if err != nil {
		return nil, err
	}
	want := devInfo{
		NrHwQueues:    uint16(opts.Queues),
		QueueDepth:    uint16(opts.Depth),
		MaxIOBufBytes: uint32(opts.MaxIOBytes),
		DevID:         autoDevID,
		Flags:         FeatureCmdIoctlEncode,
		ServerFlags:   creatorTag(os.Getpid()),
	}
	if c.legacy {
		want.Flags = 0
	}
	if opts.SpecificID {
		want.DevID = opts.ID
	}
	if opts.Recovery {
		if c.features&FeatureUserRecovery == 0 {
			c.close()
			return nil, fmt.Errorf("ublk: Options.Recovery: kernel lacks USER_RECOVERY (features %s)", FeatureString(c.features))
		}
		want.Flags |= FeatureUserRecovery
		if opts.RecoveryReissue {
			if c.features&FeatureUserRecoveryReissue == 0 {
				c.close()
				return nil, fmt.Errorf("ublk: Options.RecoveryReissue: kernel lacks USER_RECOVERY_REISSUE (features %s)", FeatureString(c.features))
			}
			want.Flags |= FeatureUserRecoveryReissue
		}
	}
	if zc := FeatureAutoBufReg | FeatureUserCopy | FeatureBufRegOffDaemon; be.files != nil && !opts.NoRingReads && !opts.NoZeroCopy &&
		c.features&zc == zc && os.Geteuid() == 0 && mapsWhole(be) {
		// Zero copy (fileread.go). BUF_REG_OFF_DAEMON marks the kernels (6.17+)
		// where worker threads, not only the queue thread, may use user copy.
		want.Flags |= FeatureAutoBufReg | FeatureUserCopy
	}
	info, err := c.addDev(want)
	if err != nil && want.Flags&FeatureAutoBufReg != 0 {
		want.Flags &^= FeatureAutoBufReg | FeatureUserCopy // refused: today's copy path
		info, err = c.addDev(want)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	d := &Device{ctrl: c, info: info, cdevFd: -1}
	fail := func(err error) (*Device, error) {
		d.teardown(true)
		return nil, err
	}
	if int(info.MaxIOBufBytes) < opts.MaxIOBytes {
		opts.MaxIOBytes = int(info.MaxIOBufBytes) // the kernel may round it down
	}
	if err := c.setParams(info.DevID, deviceParams(be, opts.MaxIOBytes)); err != nil {
		return fail(err)
	}
	if err := d.startQueues(be, opts); err != nil {
		return fail(withHint(err))
	}
	if err := c.startDev(info.DevID); err != nil {
		return fail(err)
	}
	d.serving()
	return d, nil
}

// mapsWhole reports whether all of b's data is in local files. Only then is
// zero copy chosen: the rest of the data would move by user copy (a pwrite per
// READ), which the VM benchmark measured dearer than the kernel's copy for
// 4 KiB ZFile reads.
func mapsWhole(b *backend) bool {
	const window = 1 << 30
	var ext []blockdev.FileExtent
	for off := int64(0); off < b.size; off += window {
		var ok bool
		if ext, ok = b.files.MapFile(ext[:0], off, min(window, b.size-off)); !ok {
			return false
		}
	}
	return true
}

// Recover serves again device id, quiesced after its previous server died
// (it must have been created with Options.Recovery). t must have the device's size.
// Queue count, depth and buffer size are the device's; opts supplies the rest.
func Recover(id uint32, t blockdev.Target, opts Options) (*Device, error) {
	c, err := openController()
	if err != nil {
		return nil, err
	}
	info, err := c.getDevInfo(id)
	if err != nil {
		c.close()
		return nil, err
	}
	if info.Flags&FeatureUserRecovery == 0 {
		c.close()
		return nil, fmt.Errorf("ublk: recover device %d: created without USER_RECOVERY (flags %s)", id, FeatureString(info.Flags))
	}
	if State(info.State) == StateLive && proc.Alive(int(info.ServerPID)) {
		c.close()
		return nil, fmt.Errorf("ublk: recover device %d: it is LIVE, served by pid %d", id, info.ServerPID)
	}
	if State(info.State) == StateDead {
		c.close()
		return nil, fmt.Errorf("ublk: recover device %d: it is DEAD (stopped), not quiesced", id)
	}
	if err := checkThreadBudget(int(info.NrHwQueues)); err != nil {
		c.close()
		return nil, err
	}
	be := newBackend(t)
	p, err := c.getParams(id)
	if err != nil {
		c.close()
		return nil, err
	}
	if p.Basic.DevSectors != uint64(be.size)>>9 {
		c.close()
		return nil, fmt.Errorf("ublk: recover device %d: target has %d sectors, device has %d", id, be.size>>9, p.Basic.DevSectors)
	}
	// EBUSY until the dead server's /dev/ublkcN is released and the device is QUIESCED.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = c.startUserRecovery(id)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	opts.Queues, opts.Depth, opts.MaxIOBytes = int(info.NrHwQueues), int(info.QueueDepth), int(info.MaxIOBufBytes)
	opts = opts.withDefaults()
	d := &Device{ctrl: c, info: info, cdevFd: -1}
	if err := d.startQueues(be, opts); err != nil {
		d.teardown(false)
		return nil, withHint(err)
	}
	if err := c.endUserRecovery(id); err != nil {
		d.teardown(false)
		return nil, err
	}
	d.serving()
	return d, nil
}

// openCharDev opens /dev/ublkcN, waiting briefly for udev on real hosts.
func openCharDev(id uint32) (int, error) {
	path := "/dev/ublkc" + strconv.Itoa(int(id))
	var err error
	for i := 0; i < 200; i++ {
		var fd int
		if fd, err = unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EACCES) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return -1, fmt.Errorf("ublk: open %s: %w%s", path, err, hintFor(err))
}

// startQueues opens the char device and starts every queue thread; it returns
// once each has submitted its FETCHes.
func (d *Device) startQueues(be *backend, opts Options) error {
	fd, err := openCharDev(d.info.DevID)
	if err != nil {
		return err
	}
	d.cdevFd = fd
	n := int(d.info.NrHwQueues)
	ready := make(chan error)
	for qid := 0; qid < n; qid++ {
		q := &queue{id: qid, depth: int(d.info.QueueDepth), bufSize: int(d.info.MaxIOBufBytes), cdevFd: fd,
			legacy: d.ctrl.legacy, be: be, noLinks: opts.noLinkedReads}
		if !opts.InThread {
			q.workers = min(opts.Workers, q.depth)
			if !opts.AlwaysWorkers {
				q.policy = newServePolicy(opts.BlockThreshold)
			}
		}
		if be.files != nil && !opts.NoRingReads {
			q.reads = make([]tagRead, q.depth)
		}
		q.userCopy = d.info.Flags&FeatureUserCopy != 0
		q.autoBuf = d.info.Flags&FeatureAutoBufReg != 0
		if !opts.NoAffinity {
			if set, err := d.ctrl.getQueueAffinity(d.info.DevID, qid); err == nil && set.Count() > 0 {
				q.cpus = &set
			}
		}
		if err := mapQueue(q); err != nil {
			return err
		}
		d.queues = append(d.queues, q)
		q.exited = make(chan struct{})
		go func() {
			q.err = q.run(ready)
			close(q.exited)
		}()
		if err := <-ready; err != nil {
			<-q.exited
			q.unmap()
			d.queues = d.queues[:len(d.queues)-1]
			return err
		}
	}
	return nil
}

// serving marks the device started and closes Done when its queues stop.
func (d *Device) serving() {
	d.started = true
	d.exited = make(chan struct{})
	go func() {
		for _, q := range d.queues {
			<-q.exited
		}
		close(d.exited)
	}()
}

// Done is closed when the device stops serving: after Close, or earlier if the
// kernel stopped it (e.g. Delete from another process) or a queue failed; Err
// then tells why.
func (d *Device) Done() <-chan struct{} { return d.exited }

// Err returns the queue errors that ended serving, once Done is closed.
func (d *Device) Err() error {
	select {
	case <-d.exited:
	default:
		return nil
	}
	var errs []error
	for _, q := range d.queues {
		if q.err != nil {
			errs = append(errs, q.err)
		}
	}
	return errors.Join(errs...)
}

// ID is the device number N of /dev/ublkbN.
func (d *Device) ID() uint32 { return d.info.DevID }

// Path is the block device, /dev/ublkbN.
func (d *Device) Path() string { return "/dev/ublkb" + strconv.Itoa(int(d.info.DevID)) }

// Features are the UBLK_F_* flags the kernel accepted for this device.
func (d *Device) Features() uint64 { return d.info.Flags }

// Queues and Depth are the device's geometry as the kernel accepted it.
func (d *Device) Queues() int { return int(d.info.NrHwQueues) }
func (d *Device) Depth() int  { return int(d.info.QueueDepth) }

// FileReads reports how many READs the queues served by reading the Target's
// local files on their own rings (blockdev.FileMapper), and how many of those
// went straight into the request's pages (zero copy, Features has AUTO_BUF_REG).
func (d *Device) FileReads() (ring, zeroCopy uint64) {
	for _, q := range d.queues {
		ring += q.ringReads.Load()
		zeroCopy += q.zeroCopyN.Load()
	}
	return ring, zeroCopy
}

// LinkedReads reports how many READs the queues read on their rings with each
// read chained to the request's COMMIT (one ring round trip; fileread.go), and
// how many ring reads failed or came back short and were served through the
// Target's ReadAt instead.
func (d *Device) LinkedReads() (linked, reread uint64) {
	for _, q := range d.queues {
		linked += q.linkedN.Load()
		reread += q.rereadN.Load()
	}
	return linked, reread
}

// QueueRequests reports how many requests each queue has received so far.
func (d *Device) QueueRequests() []uint64 {
	n := make([]uint64, len(d.queues))
	for i, q := range d.queues {
		n[i] = q.served.Load()
	}
	return n
}

// Info reads the device's current state from the kernel.
func (d *Device) Info() (Info, error) {
	di, err := d.ctrl.getDevInfo(d.info.DevID)
	return infoFrom(di), err
}

// Close stops the device (the kernel fails new I/O and removes /dev/ublkbN),
// waits for the queue threads, releases every mapping and deletes the device.
// Close /dev/ublkbN (and unmount it) first: the kernel waits for its users.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.teardown(true) })
	return d.closeErr
}

// teardown releases everything; del says whether to delete the device too
// (a failed recovery leaves it quiesced for another attempt).
func (d *Device) teardown(del bool) error {
	var errs []error
	if d.started {
		// STOP_DEV completes every pending FETCH with -ENODEV, so queue threads
		// leave their loops once in-flight requests are answered.
		if err := d.ctrl.stopDev(d.info.DevID); err != nil {
			if !errors.Is(err, unix.ENODEV) { // ENODEV: deleted from outside already
				errs = append(errs, err)
			}
			for _, q := range d.queues {
				q.abandon()
			}
		}
	} else {
		for _, q := range d.queues { // STOP_DEV would abort nothing
			q.abandon()
		}
	}
	for _, q := range d.queues {
		<-q.exited
		if q.err != nil {
			errs = append(errs, q.err)
		}
		q.unmap()
	}
	if d.cdevFd >= 0 {
		unix.Close(d.cdevFd) // the kernel deletes only once /dev/ublkcN is released
		d.cdevFd = -1
	}
	if del {
		if err := d.ctrl.delDev(d.info.DevID); errors.Is(err, unix.ENODEV) {
			// deleted from outside already
		} else if err != nil {
			errs = append(errs, err)
		} else if err := waitGone(d.ctrl, d.info.DevID, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	d.ctrl.close()
	return errors.Join(errs...)
}

// waitGone waits until the kernel has dropped the last reference to device id,
// so that the id is free again when Close returns. DEL_DEV would wait forever
// if someone still holds /dev/ublkbN open; this gives up with an error.
func waitGone(c *controller, id uint32, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := c.getDevInfo(id)
		if errors.Is(err, unix.ENODEV) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ublk: device %d deleted but still referenced after %v (is /dev/ublkb%d open or mounted?)", id, timeout, id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Info describes a ublk device as the kernel reports it.
type Info struct {
	ID         uint32
	State      State
	Queues     int
	Depth      int
	MaxIOBytes int
	ServerPID  int // the process that last served it (0 before START_DEV)
	CreatorPID int // the process that created it with this package, or 0
	Features   uint64
}

// creatorMagic marks ublksrv_flags (opaque to the kernel) as holding the pid of
// the creating process, so CleanupOrphans can tell a device being set up
// (server pid still 0) from one whose creator died.
const creatorMagic = 0x6f626400 // "obd\0"

func creatorTag(pid int) uint64 { return creatorMagic<<32 | uint64(uint32(pid)) }

func creatorPID(flags uint64) int {
	if flags>>32 != creatorMagic {
		return 0
	}
	return int(uint32(flags))
}

func infoFrom(di devInfo) Info {
	return Info{ID: di.DevID, State: State(di.State), Queues: int(di.NrHwQueues), Depth: int(di.QueueDepth),
		MaxIOBytes: int(di.MaxIOBufBytes), ServerPID: int(di.ServerPID), CreatorPID: creatorPID(di.ServerFlags),
		Features: di.Flags}
}

// Features reports the UBLK_F_* flags the running kernel supports.
func Features() (uint64, error) {
	c, err := openController()
	if err != nil {
		return 0, err
	}
	defer c.close()
	return c.features, nil
}

// GetInfo reads device id's state.
func GetInfo(id uint32) (Info, error) {
	c, err := openController()
	if err != nil {
		return Info{}, err
	}
	defer c.close()
	di, err := c.getDevInfo(id)
	return infoFrom(di), err
}

// Delete stops and deletes device id, e.g. one left behind by a dead server.
// It must not be served by a live process (see CleanupOrphans).
func Delete(id uint32) error {
	c, err := openController()
	if err != nil {
		return err
	}
	defer c.close()
	return deleteWith(c, id)
}

func deleteWith(c *controller, id uint32) error {
	stopErr := c.stopDev(id) // fails harmlessly on a never-started or already-stopped device
	if err := c.delDev(id); err != nil {
		return errors.Join(err, stopErr)
	}
	return waitGone(c, id, 10*time.Second)
}

// charDevClass lists every ublk device, live or not, as ublkcN.
const charDevClass = "/sys/class/ublk-char"

// List reports every ublk device on the system.
func List() ([]Info, error) {
	ids, err := listIDs()
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	c, err := openController()
	if err != nil {
		return nil, err
	}
	defer c.close()
	var out []Info
	for _, id := range ids {
		di, err := c.getDevInfo(id)
		if errors.Is(err, unix.ENODEV) {
			continue // deleted meanwhile
		}
		if err != nil {
			return out, err
		}
		out = append(out, infoFrom(di))
	}
	return out, nil
}

func listIDs() ([]uint32, error) {
	ents, err := os.ReadDir(charDevClass)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ublk: list devices: %w", err)
	}
	var ids []uint32
	for _, e := range ents {
		if n, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), "ublkc"), 10, 32); err == nil && strings.HasPrefix(e.Name(), "ublkc") {
			ids = append(ids, uint32(n))
		}
	}
	return ids, nil
}

// CleanupOrphans deletes devices whose server process is gone (and whose
// creator, if this package made them, is gone too: a device being set up has
// no server yet), except those keep returns true for (e.g. quiesced devices a
// caller wants to Recover). It returns the ids it deleted.
func CleanupOrphans(keep func(id uint32) bool) ([]uint32, error) {
	infos, err := List()
	if err != nil {
		return nil, err
	}
	c, err := openController()
	if err != nil {
		return nil, err
	}
	defer c.close()
	var deleted []uint32
	var errs []error
	for _, in := range infos {
		if proc.Alive(in.ServerPID) || proc.Alive(in.CreatorPID) || (keep != nil && keep(in.ID)) {
			continue
		}
		if err := deleteWith(c, in.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, in.ID)
	}
	return deleted, errors.Join(errs...)
}
