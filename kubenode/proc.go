package kubenode

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// spawner starts processes inside the node's network namespace from one
// OS thread that it owns and that stays in the namespace until the node
// stops. Why one thread: a child's parent-death signal (Pdeathsig, so the
// node's processes die with a test binary that panics or is killed) fires
// when the *thread* that forked it exits, and netnstest's Do and Dial end
// their threads after each call; a thread of the runtime's pool might be
// one of those later. This thread exits only in close, after every child
// is gone.
type spawner struct {
	reqs chan func()
	done chan struct{}
}

func newSpawner(nsPath string) (*spawner, error) {
	s := &spawner{reqs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(s.done)
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in the node's namespace and
		// must not go back to the pool; it ends with this goroutine.
		h, err := netns.GetFromPath(nsPath)
		if err == nil {
			err = netns.Set(h)
			_ = h.Close()
		}
		errc <- err
		if err != nil {
			return
		}
		for f := range s.reqs {
			f()
		}
	}()
	if err := <-errc; err != nil {
		<-s.done
		return nil, fmt.Errorf("enter network namespace %s: %w", nsPath, err)
	}
	return s, nil
}

// start starts cmd on the spawner's thread (in the node's namespace).
func (s *spawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	s.reqs <- func() { errc <- cmd.Start() }
	return <-errc
}

// close ends the spawner's thread. Call it after every child has exited.
func (s *spawner) close() {
	close(s.reqs)
	<-s.done
}

// proc is one of the node's daemons: a child in the node's namespace with
// its log in the node's directory.
type proc struct {
	name    string
	logFile string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
}

// startProc starts bin with args in the namespace, its output appended
// to logFile, with SIGKILL as its parent-death signal.
func startProc(sp *spawner, name, logFile, bin string, args []string, env []string) (*proc, error) {
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() { _ = log.Close() }()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sp.start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logFile: logFile, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILL, and waits for the
// exit. It is idempotent.
func (p *proc) stop(grace time.Duration) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// logTail is the last n lines of the process's log.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.logFile)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// poll calls f every interval until it returns true or an error, ctx
// ends, or (if p is not nil) p exits.
func poll(ctx context.Context, what string, p *proc, f func() (bool, error)) error {
	var last error
	for {
		ok, err := f()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if p != nil && !p.running() {
			return fmt.Errorf("%s: %s exited (%v); its log ends:\n%s", what, p.name, p.cmd.ProcessState, p.logTail(30))
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: %w (last: %w)", what, ctx.Err(), last)
			}
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
