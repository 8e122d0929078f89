package labbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/lab"
)

// The client's sockets block (no Go netpoller between the packet and the
// clock) with these timeouts, so every call is bounded.
const (
	sockTimeout = time.Second
	// maxConnErrors ends a connection-rate loop that keeps failing.
	maxConnErrors = 1000
	// helloMax bounds the echo server's hello line.
	helloMax = 512
)

// clientSysctls let the client open connections as fast as it can close
// them: more ephemeral ports, and ports of connections in TIME_WAIT
// reused after a second (TCP timestamps make that safe).
var clientSysctls = map[string]string{
	"net/ipv4/ip_local_port_range": "1024 65535",
	"net/ipv4/tcp_tw_reuse":        "1",
}

// widenPorts sets clientSysctls in the client pod's namespace (/proc/sys/net
// shows the namespace of the thread that opens it).
func widenPorts(netns string) error {
	return lab.InNetns(netns, func() error {
		for k, v := range clientSysctls {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("client pod: sysctl %s: %w", k, err)
			}
		}
		return nil
	})
}

// connResult is what connection loops did.
type connResult struct {
	n, errs int
	// lastErr is the last failure, if any.
	lastErr error
	took    time.Duration
}

// connRate runs workers loops of connect, read the hello line, close
// against target from the namespace netns: for warmup, uncounted, then
// for d. It returns the connections made and failed in d, and how long
// the loops really ran.
func connRate(ctx context.Context, netns string, target netip.AddrPort, workers int, warmup, d time.Duration) (connResult, error) {
	run := func(d time.Duration) (connResult, error) {
		results := make([]connResult, workers)
		errs := make([]error, workers)
		var wg sync.WaitGroup
		start := time.Now()
		until := start.Add(d)
		for w := range workers {
			wg.Go(func() {
				errs[w] = lab.InNetns(netns, func() error {
					results[w] = connLoop(ctx, target, until)
					return nil
				})
			})
		}
		wg.Wait()
		sum := connResult{took: time.Since(start)}
		for _, r := range results {
			sum.n, sum.errs = sum.n+r.n, sum.errs+r.errs
			if r.lastErr != nil {
				sum.lastErr = r.lastErr
			}
		}
		return sum, errors.Join(errs...)
	}
	if _, err := run(warmup); err != nil {
		return connResult{}, err
	}
	res, err := run(d)
	switch {
	case err != nil:
		return res, err
	case ctx.Err() != nil:
		return res, ctx.Err()
	case res.n == 0:
		return res, fmt.Errorf("no connection to %s succeeded in %s (%d failed, the last: %w)", target, d, res.errs, res.lastErr)
	}
	return res, nil
}

// connLoop connects, reads the hello line and closes until the time is
// up, ctx ends or too many connections failed.
func connLoop(ctx context.Context, target netip.AddrPort, until time.Time) connResult {
	var r connResult
	buf := make([]byte, helloMax)
	for i := 0; time.Now().Before(until) && r.errs < maxConnErrors; i++ {
		if i%64 == 0 && ctx.Err() != nil {
			break
		}
		fd, err := dial(target)
		if err == nil {
			err = readLine(fd, buf)
			_ = unix.Close(fd)
			if err != nil {
				err = fmt.Errorf("read hello: %w", err)
			}
		}
		if err != nil {
			r.errs++
			r.lastErr = err
			continue
		}
		r.n++
	}
	return r
}

// requestResponse opens one connection from the namespace netns, reads
// the hello line, then times count ping-pongs of size bytes, after a
// tenth as many untimed.
func requestResponse(ctx context.Context, netns string, target netip.AddrPort, count, size int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, count)
	err := lab.InNetns(netns, func() error {
		fd, err := dial(target)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", target, err)
		}
		defer func() { _ = unix.Close(fd) }()
		if err := readLine(fd, make([]byte, helloMax)); err != nil {
			return fmt.Errorf("%s: hello: %w", target, err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return fmt.Errorf("TCP_NODELAY: %w", err)
		}
		ping := bytes.Repeat([]byte{'x'}, size)
		pong := make([]byte, size)
		warm := max(count/10, 1)
		for i := range warm + count {
			if i%1024 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			start := time.Now()
			if err := writeAll(fd, ping); err != nil {
				return fmt.Errorf("ping %d: %w", i, err)
			}
			if err := readFull(fd, pong); err != nil {
				return fmt.Errorf("pong %d: %w", i, err)
			}
			if i >= warm {
				lat = append(lat, time.Since(start))
			}
		}
		return nil
	})
	return lat, err
}

// dial makes a blocking TCP socket in the calling thread's namespace,
// with send and receive timeouts (connect obeys the send timeout), and
// connects it to target.
func dial(target netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	tv := unix.NsecToTimeval(sockTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			_ = unix.Close(fd)
			return -1, fmt.Errorf("socket timeout: %w", err)
		}
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().As4()})
	if errors.Is(err, unix.EINTR) {
		// A signal (the Go runtime's) interrupted the wait, not the
		// handshake, which goes on: wait for its end.
		err = waitConnected(fd)
	}
	if errors.Is(err, unix.EINPROGRESS) {
		// What a blocking connect says when SO_SNDTIMEO ran out: the SYN
		// or its answer was lost (its retransmission comes after 1s).
		err = fmt.Errorf("%w after %s", unix.ETIMEDOUT, sockTimeout)
	}
	if err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	return fd, nil
}

// waitConnected waits up to sockTimeout for an interrupted connect to end,
// and returns how it ended.
func waitConnected(fd int) error {
	deadline := time.Now().Add(sockTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ,
// 100 on every architecture Linux runs Go on.
const userHZ = 100

// cpuTime returns the CPU time (user and system) pids have used so far;
// a PID that is gone counts nothing.
func cpuTime(pids []int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The fields after the command name, which is in parentheses and
		// may hold anything: state is the first, utime the 12th, stime
		// the 13th.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return time.Duration(ticks) * time.Second / userHZ
}

// readLine reads until a newline; buf bounds the line.
func readLine(fd int, buf []byte) error {
	got := 0
	for got < len(buf) {
		k, err := unix.Read(fd, buf[got:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return errors.New("closed by the server")
		}
		if bytes.IndexByte(buf[got:got+k], '\n') >= 0 {
			return nil
		}
		got += k
	}
	return errors.New("no newline in the hello line")
}

func readFull(fd int, buf []byte) error {
	for got := 0; got < len(buf); {
		k, err := unix.Read(fd, buf[got:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return errors.New("closed by the server")
		}
		got += k
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		k, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[k:]
	}
	return nil
}
