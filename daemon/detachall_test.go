package daemon

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/image"
	"go.uber.org/zap"
)

// nullTarget is an empty device for tests that never do I/O.
type nullTarget struct{}

func (nullTarget) ReadAt(p []byte, off int64) (int, error)  { return 0, nil }
func (nullTarget) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (nullTarget) Flush() error                             { return nil }
func (nullTarget) Size() int64                              { return 1 << 20 }

// slowServer is a frontend whose Close waits until every device of the test is
// closing at once (or gives up after a while), and records how many did.
type slowServer struct {
	path    string
	closing *atomic.Int32
	most    *atomic.Int32
	all     int32
	wake    chan struct{}
	once    *sync.Once
}

func (s *slowServer) Path() string { return s.path }
func (s *slowServer) Close() error {
	n := s.closing.Add(1)
	defer s.closing.Add(-1)
	for {
		m := s.most.Load()
		if n <= m || s.most.CompareAndSwap(m, n) {
			break
		}
	}
	if n == s.all {
		s.once.Do(func() { close(s.wake) })
	}
	select {
	case <-s.wake:
	case <-time.After(time.Second):
	}
	return nil
}

// DetachAll (daemon stop) detaches the devices in parallel: one slow to close
// does not hold back the others, so a stop fits in the service manager's timeout.
func TestDetachAllParallel(t *testing.T) {
	m, err := NewManager(Options{RunDir: t.TempDir(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	const devices = 8
	var closing, most atomic.Int32
	wake, once := make(chan struct{}), &sync.Once{}
	for id := range devices {
		path := fmt.Sprintf("/run/obd-test/%d/image", id)
		m.devices[id] = &device{rec: Record{ID: id, Frontend: FrontendFUSE, Path: path}, img: &image.Image{},
			target: &countingTarget{t: nullTarget{}},
			srv:    &slowServer{path: path, closing: &closing, most: &most, all: devices, wake: wake, once: once}}
	}
	if err := m.DetachAll(); err != nil {
		t.Fatal(err)
	}
	if got := most.Load(); got != devices {
		t.Errorf("at most %d of %d devices were closing at once: DetachAll is sequential", got, devices)
	}
	if left := m.List(); len(left) != 0 {
		t.Errorf("%d devices left after DetachAll", len(left))
	}
}
