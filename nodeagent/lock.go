package nodeagent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrStateDirInUse is wrapped by a *StateDirInUseError.
var ErrStateDirInUse = errors.New("state directory in use")

// StateDirInUseError is returned by Run when another agent holds the
// state directory. Run returns it before it has read, written or pinned
// anything.
type StateDirInUseError struct {
	Dir string
	PID int // the holder's, 0 when it has not written it yet
}

func (e *StateDirInUseError) Error() string {
	holder := "another mesh-agent"
	if e.PID > 0 {
		holder = "mesh-agent PID " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("state directory %s is in use by %s: stop it, or give this agent another --state-dir/--node", e.Dir, holder)
}

func (e *StateDirInUseError) Unwrap() error { return ErrStateDirInUse }

// lockFile is the agent's lock in its state directory.
const lockFile = "agent.lock"

// lockStateDir takes the agent's exclusive lock on its state directory:
// an flock(2) on StateDir/agent.lock, which the kernel releases when the
// process ends however it ends, so a crash never leaves a stale lock. The
// holder's PID is written into the file for the message a second agent
// gets. Run takes it before anything else: the state directory names the
// etcd lease (StateDir/lease), the pod IP journal and the endpoints, so a
// second agent on it must be refused before it reads, writes or pins
// anything. Closing the returned file releases the lock; the file stays
// (removing it would race with an agent that just opened it).
func lockStateDir(dir string) (*os.File, error) {
	// The only write before the lock: the directory itself, when missing
	// (then nobody can hold it).
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid := lockHolder(f)
		_ = f.Close() // the lock error is the one to report
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &StateDirInUseError{Dir: dir, PID: pid}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := f.Truncate(0); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	if _, err := f.WriteAt(pid, 0); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	return f, nil
}

// lockHolder returns the PID the lock's holder wrote, or 0 when it has
// taken the lock but not written its PID yet.
func lockHolder(f *os.File) int {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 32))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid < 0 {
		return 0
	}
	return pid
}
