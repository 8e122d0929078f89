package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/kvstore/embedded"
)

// The lab's processes (etcd proxies, agents, echo servers) run detached:
// a session of their own, stdin from /dev/null, output to a log file in
// the run directory, so they outlive `meshctl lab up`. Their PIDs are in
// the state file; every one of them carries an argument "--flag=<run
// dir>/..." (its state dir, data dir or ready file), by which Down tells
// them from a process that took over a recycled PID, and finds those a
// crash kept from being recorded.

// spawn starts argv detached with its output appended to logPath. The
// child is not waited for here: waitGone reaps it when it is stopped.
func spawn(argv []string, logPath string) (int, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return 0, fmt.Errorf("log dir: %w", err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("log file: %w", err)
	}
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", filepath.Base(argv[0]), err)
	}
	pid := cmd.Process.Pid
	// Release the handle: the child is reaped by PID (waitGone), by this
	// process if it is still the parent, by init otherwise.
	_ = cmd.Process.Release()
	return pid, nil
}

// childEnv is this process's environment without MESHPLANE_* variables:
// they would configure the lab's agents behind the lab's back.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHPLANE_") {
			env = append(env, kv)
		}
	}
	return env
}

// procCmdline returns a process's arguments and whether it is running (a
// zombie is not).
func procCmdline(pid int) ([]string, bool) {
	if pid <= 0 {
		return nil, false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	// The state follows the command name in parentheses, which may itself
	// hold spaces and parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return nil, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, false
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), true
}

// ownedBy reports whether args carry the lab's mark: a flag whose value
// is inside the lab's run directory.
func ownedBy(args []string, dir string) bool {
	for _, a := range args {
		if strings.HasPrefix(a, "--") && strings.Contains(a, "="+dir+"/") {
			return true
		}
	}
	return false
}

// An exec in progress makes a process look gone for a moment: its
// command line reads empty, and when a thread other than the leader
// execs (Go's nsexec does), the leader shows as a zombie until the
// exec'ing thread takes over its PID. Checks of a process by /proc
// therefore look a few times before they say it is gone.
const (
	procLooks    = 5
	procLookWait = 5 * time.Millisecond
)

// alive reports whether pid runs and is the lab's.
func alive(pid int, dir string) bool {
	for range procLooks {
		args, ok := procCmdline(pid)
		if ok && (len(args) > 1 || args[0] != "") {
			return ownedBy(args, dir)
		}
		time.Sleep(procLookWait)
	}
	return false
}

// running reports whether pid runs (and is no zombie), with the same
// care as alive.
func running(pid int) bool {
	for range procLooks {
		if _, ok := procCmdline(pid); ok {
			return true
		}
		time.Sleep(procLookWait)
	}
	return false
}

// exited reports whether pid has ended, reaping it if it is a child of
// this process: for a child, wait4 is exact (an exec is no exit); for
// another process's, /proc must do.
func exited(pid int) bool {
	if pid <= 0 {
		return true // wait4(0) would wait for any child
	}
	var ws unix.WaitStatus
	got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	switch {
	case got == pid:
		return true
	case err == nil:
		return false // our child, still running
	case !errors.Is(err, unix.ECHILD):
		return false
	}
	return !running(pid)
}

// waitGone waits until pid no longer runs, reaping it if it is a child of
// this process, for up to timeout.
func waitGone(ctx context.Context, pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if exited(pid) {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stopProc ends a lab process: SIGTERM, up to grace to exit, then
// SIGKILL. A PID that is gone or no longer the lab's is left alone.
func stopProc(ctx context.Context, pid int, dir string, grace time.Duration) error {
	if !alive(pid, dir) {
		waitGone(ctx, pid, 0) // reap a zombie child
		return nil
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, err)
	}
	if waitGone(ctx, pid, grace) {
		return nil
	}
	if !alive(pid, dir) {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	if !waitGone(context.WithoutCancel(ctx), pid, 5*time.Second) {
		return fmt.Errorf("process %d survived SIGKILL", pid)
	}
	return nil
}

// scanProcs returns the PIDs of running processes that carry the lab's
// mark, besides this one: those a crash kept out of the state file.
func scanProcs(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if args, ok := procCmdline(pid); ok && ownedBy(args, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// logTail returns the last lines of a log, for an error about the process
// that wrote it.
func logTail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// EtcdConfig configures ServeEtcd, the `meshctl lab etcd` helper.
type EtcdConfig struct {
	// Dir holds the embedded etcd's data. Required without Upstream.
	Dir string
	// Socket is the unix socket to serve. Required.
	Socket string
	// Upstream, if set, are the client URLs (http:// or unix://) of an
	// external etcd to proxy to; no etcd is started.
	Upstream []string
	// Ready, if set, is told the etcd client URL once the socket serves.
	Ready io.Writer
}

// maxProxyConns bounds the proxied connections: each agent holds a few.
const maxProxyConns = 512

// ServeEtcd runs a cluster's etcd for the lab until ctx ends: an embedded
// etcd on loopback in Dir (or, with Upstream, an external one), reached
// through the unix socket Socket. Unix sockets are files, so agents in
// node namespaces reach it (--etcd-endpoints unix://<Socket>), though
// the etcd's loopback address is in the root namespace.
//
// One goroutine accepts; two copy each connection's directions. All end
// before ServeEtcd returns.
func ServeEtcd(ctx context.Context, cfg EtcdConfig) error {
	if cfg.Socket == "" || (cfg.Dir == "" && len(cfg.Upstream) == 0) {
		return errors.New("lab etcd: needs a socket, and a data dir or an upstream")
	}
	upstream := cfg.Upstream
	if len(upstream) == 0 {
		srv, err := embedded.Start(ctx, cfg.Dir, [2]int{})
		if err != nil {
			return err
		}
		defer srv.Close()
		upstream = []string{srv.ClientURL()}
	}
	var targets [][2]string // network, address
	for _, u := range upstream {
		p, err := url.Parse(u)
		if err != nil {
			return fmt.Errorf("lab etcd: upstream %q: %w", u, err)
		}
		switch p.Scheme {
		case "http":
			targets = append(targets, [2]string{"tcp", p.Host})
		case "unix":
			targets = append(targets, [2]string{"unix", p.Host + p.Path})
		default:
			return fmt.Errorf("lab etcd: upstream %q: use http:// or unix://", u)
		}
	}
	_ = os.Remove(cfg.Socket)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return fmt.Errorf("lab etcd: listen: %w", err)
	}
	if cfg.Ready != nil {
		fmt.Fprintf(cfg.Ready, "etcd at %s serves unix://%s\n", strings.Join(upstream, ","), cfg.Socket)
	}
	var wg sync.WaitGroup
	conns := make(map[net.Conn]struct{})
	var mu sync.Mutex // guards conns
	stop := context.AfterFunc(ctx, func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	track := func(c net.Conn, add bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if !add {
			delete(conns, c)
			return true
		}
		if ctx.Err() != nil || len(conns) >= maxProxyConns {
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		if !track(c, true) {
			_ = c.Close()
			continue
		}
		wg.Go(func() {
			defer track(c, false)
			proxy(ctx, c, targets, track)
		})
	}
	wg.Wait()
	_ = os.Remove(cfg.Socket)
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("lab etcd: listener closed")
}

// proxy copies between c and the first upstream that answers.
func proxy(ctx context.Context, c net.Conn, targets [][2]string, track func(net.Conn, bool) bool) {
	defer func() { _ = c.Close() }()
	var up net.Conn
	for _, t := range targets {
		d := net.Dialer{Timeout: 2 * time.Second}
		var err error
		if up, err = d.DialContext(ctx, t[0], t[1]); err == nil {
			break
		}
	}
	if up == nil || !track(up, true) {
		if up != nil {
			_ = up.Close()
		}
		return
	}
	defer track(up, false)
	defer func() { _ = up.Close() }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		closeWrite(up)
	}()
	_, _ = io.Copy(c, up)
	closeWrite(c)
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
