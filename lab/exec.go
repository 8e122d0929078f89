package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Nsexec replaces the calling process with argv, run inside the network
// namespace at netnsPath: `meshctl lab nsexec`. Only the network
// namespace changes; the mount namespace stays, so the program sees
// /sys/fs/bpf and the run directory as the host does (`ip netns exec`
// remounts /sys, which hides bpffs). On success it does not return.
//
// execve keeps the namespaces of the thread that calls it, and setns of a
// network namespace is allowed in a multithreaded process: so a locked
// thread that enters the namespace and execs takes the whole new program
// there.
func Nsexec(netnsPath string, argv []string) error {
	if len(argv) == 0 {
		return errors.New("lab nsexec: no command")
	}
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("lab nsexec: %w", err)
	}
	runtime.LockOSThread()
	// No UnlockOSThread: on failure the thread may be in the namespace,
	// and the process is about to exit with the error anyway.
	fd, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("lab nsexec: open netns: %w", err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		_ = unix.Close(fd)
		return fmt.Errorf("lab nsexec: enter netns %s: %w", netnsPath, err)
	}
	_ = unix.Close(fd)
	if err := syscall.Exec(prog, argv, os.Environ()); err != nil {
		return fmt.Errorf("lab nsexec: exec %s: %w", prog, err)
	}
	return nil // not reached
}

// Exec runs argv inside a pod's network namespace (through `meshctl lab
// nsexec`) with the given output, and waits for it. Its stdin is empty.
// ctx's end kills it.
func (l *Lab) Exec(ctx context.Context, pod string, argv []string, stdout, stderr io.Writer) error {
	p, err := l.Pod(pod)
	if err != nil {
		return err
	}
	return l.ExecStdin(ctx, p, argv, nil, stdout, stderr)
}

// ExecStdin is Exec for a resolved pod, with stdin (nil: empty).
func (l *Lab) ExecStdin(ctx context.Context, p Pod, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return errors.New("exec: no command")
	}
	args := append([]string{"lab", "nsexec", "--netns=" + p.Netns, "--"}, argv...)
	cmd := exec.CommandContext(ctx, l.st.Meshctl, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.Env = childEnv()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("exec in pod %s: %w", p.Ref(), err)
	}
	return nil
}
