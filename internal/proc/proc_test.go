package proc

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestAlive(t *testing.T) {
	if !Alive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if start, ok := Start(os.Getpid()); !ok || start == 0 {
		t.Errorf("Start(self) = %d, %v", start, ok)
	}
	if Alive(0) || Alive(-1) || Alive(1<<30) {
		t.Error("impossible pid alive")
	}
}

// A zombie (exited, not reaped) is dead: kill(pid, 0) would call it alive.
func TestZombieIsDead(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(30 * time.Second); !isZombie(pid); {
		if time.Now().After(deadline) {
			t.Fatal("child never became a zombie")
		}
		time.Sleep(time.Millisecond)
	}
	if Alive(pid) {
		t.Errorf("zombie %d reported alive", pid)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	return strings.HasPrefix(strings.TrimSpace(s[strings.LastIndexByte(s, ')')+1:]), "Z")
}
