package cpuload

import (
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLoad starts two busy processes for a moment and checks that Stop
// ends them and that the CPU times move.
func TestLoad(t *testing.T) {
	if _, err := Start(0); err == nil {
		t.Error("Start(0): no error")
	}
	l, err := Start(2)
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{}
	l.mu.Lock()
	for _, c := range l.cmds {
		pids = append(pids, c.Process.Pid)
	}
	l.mu.Unlock()
	if l.Procs() != 2 {
		t.Errorf("Procs() = %d", l.Procs())
	}
	time.Sleep(200 * time.Millisecond) // let them burn some CPU: what is measured
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	if busy, _ := l.Since(); busy <= 0 || busy > 100 {
		t.Errorf("busy %.1f%%", busy)
	}
	for _, pid := range pids {
		if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.Signal(0)) == nil {
			t.Errorf("load process %d still runs after Stop", pid)
		}
	}
	if err := l.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}
