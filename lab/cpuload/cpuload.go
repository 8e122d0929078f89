// Package cpuload keeps a machine's CPUs busy for benchmarks of what load
// does to the control plane (`meshctl bench gossip`, `meshctl bench
// health`): busy-looping /bin/sh processes, started and stopped by PID,
// each ending by itself if the process that started it dies. It also
// reads how busy the CPUs were (/proc/stat). It never logs.
package cpuload

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// script spins the CPU, checking every few hundred milliseconds that its
// parent still runs, so that it ends by itself if the parent is killed
// before it can stop it.
const script = `while kill -0 $PPID 2>/dev/null; do i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; done`

// DefaultProcs is the default number of busy processes: two per CPU, so
// that every CPU stays busy even while some of them are descheduled.
func DefaultProcs() int { return 2 * runtime.NumCPU() }

// Load is a set of running busy processes. Stop may be called from any
// goroutine, more than once.
type Load struct {
	mu    sync.Mutex // guards cmds
	cmds  []*exec.Cmd
	start CPUTimes
}

// Start starts procs busy-looping processes. On error it stops those it
// started.
func Start(procs int) (*Load, error) {
	if procs < 1 {
		return nil, fmt.Errorf("cpu load: %d processes: use at least 1", procs)
	}
	l := &Load{start: ReadCPUTimes()}
	for range procs {
		c := exec.Command("/bin/sh", "-c", script)
		if err := c.Start(); err != nil {
			return nil, errors.Join(fmt.Errorf("cpu load: start: %w", err), l.Stop())
		}
		l.cmds = append(l.cmds, c)
	}
	return l, nil
}

// Procs is the number of processes Start started.
func (l *Load) Procs() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cmds)
}

// Stop kills the processes (by PID) and reaps them, and returns how busy
// the machine's CPUs were since Start (see CPUTimes.PctUntil).
func (l *Load) Stop() error {
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	var errs []error
	for _, c := range cmds {
		if err := c.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("cpu load: stop process %d: %w", c.Process.Pid, err))
		}
		_ = c.Wait() // killed: the exit status says so
	}
	return errors.Join(errs...)
}

// Since returns the share of CPU time the machine spent busy, and that
// its hypervisor stole, since Start, in percent; -1 if /proc/stat could
// not be read.
func (l *Load) Since() (busy, steal float64) { return l.start.PctUntil(ReadCPUTimes()) }

// CPUTimes are the jiffies of the "cpu" line of /proc/stat; zero where
// there is none.
type CPUTimes struct{ busy, steal, total uint64 }

// ReadCPUTimes reads the machine's CPU times now.
func ReadCPUTimes() CPUTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return CPUTimes{}
	}
	var t CPUTimes
	// user nice system idle iowait irq softirq steal [guest guest_nice,
	// which user already counts]
	for i, f := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return CPUTimes{}
		}
		t.total += v
		switch i {
		case 3, 4: // idle, iowait
		case 7:
			t.steal += v
		default:
			t.busy += v
		}
	}
	return t
}

// PctUntil is the share of CPU time spent busy in this machine, and stolen
// from it by its hypervisor, between t and later, in percent; -1 if
// /proc/stat could not be read.
func (t CPUTimes) PctUntil(later CPUTimes) (busy, steal float64) {
	if t.total == 0 || later.total <= t.total {
		return -1, -1
	}
	d := float64(later.total - t.total)
	return 100 * float64(later.busy-t.busy) / d, 100 * float64(later.steal-t.steal) / d
}
