package healthbench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/meshplane/meshplane/lab"
)

// The client's connections: generous timeouts, so that a client thread
// descheduled by the load is not mistaken for a dropped connection (a
// connection without a backend never completes at all).
const (
	trafficEvery   = 20 * time.Millisecond
	trafficTimeout = 3 * time.Second
	maxErrs        = 5 // failures kept for the progress lines
)

// traffic is the client's connections to a service while a node restarts:
// a new connection every trafficEvery (connect, the backend's hello, an
// echo, close), and one long-lived connection echoing a line as often.
type traffic struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu         sync.Mutex // guards the fields below
	attempts   int
	failures   int
	longBroken int
	errs       []string
}

// trafficResult is what traffic saw.
type trafficResult struct {
	attempts, failures, longBroken int
	errs                           []string
}

// startTraffic starts the connections from the pod's namespace to target,
// whose backend answers hello.
func startTraffic(netns string, target netip.AddrPort, hello string) (*traffic, error) {
	tr := &traffic{done: make(chan struct{})}
	long, r, err := dialLong(netns, target, hello)
	if err != nil {
		return nil, err
	}
	tr.wg.Go(func() {
		defer func() { _ = long.Close() }()
		for i := 0; ; i++ {
			select {
			case <-tr.done:
				return
			case <-time.After(trafficEvery):
			}
			if err := echo(long, r, i); err != nil {
				_ = long.Close()
				tr.fail(&tr.longBroken, fmt.Errorf("long-lived connection: %w", err))
				// A new one, so that a second break counts too.
				if long, r, err = dialLong(netns, target, hello); err != nil {
					tr.fail(&tr.longBroken, fmt.Errorf("long-lived connection: %w", err))
					return
				}
			}
		}
	})
	tr.wg.Go(func() {
		_ = lab.InNetns(netns, func() error {
			for i := 0; ; i++ {
				select {
				case <-tr.done:
					return nil
				case <-time.After(trafficEvery):
				}
				err := connectOnce(target, hello, i)
				tr.mu.Lock()
				tr.attempts++
				tr.mu.Unlock()
				if err != nil {
					tr.fail(&tr.failures, err)
				}
			}
		})
	})
	return tr, nil
}

func (tr *traffic) fail(counter *int, err error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	*counter++
	if len(tr.errs) < maxErrs {
		tr.errs = append(tr.errs, time.Now().Format("15:04:05.000")+": "+err.Error())
	}
}

// stop ends the connections and returns what they saw. It may be called
// again.
func (tr *traffic) stop() trafficResult {
	select {
	case <-tr.done:
	default:
		close(tr.done)
	}
	tr.wg.Wait()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return trafficResult{attempts: tr.attempts, failures: tr.failures, longBroken: tr.longBroken, errs: tr.errs}
}

// dialLong opens the long-lived connection from the namespace (a socket
// keeps the namespace it was made in) and reads the backend's hello.
func dialLong(netns string, target netip.AddrPort, hello string) (net.Conn, *bufio.Reader, error) {
	var c net.Conn
	err := lab.InNetns(netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", target.String(), trafficTimeout)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", target, err)
	}
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(trafficTimeout))
	got, err := r.ReadString('\n')
	if err != nil {
		_ = c.Close()
		return nil, nil, fmt.Errorf("%s: hello: %w", target, err)
	}
	if got != hello+"\n" {
		_ = c.Close()
		return nil, nil, fmt.Errorf("%s: hello %q, want %q", target, got, hello)
	}
	return c, r, nil
}

// connectOnce opens a connection to target from the thread's namespace,
// checks the hello and an echo, and closes it.
func connectOnce(target netip.AddrPort, hello string, i int) error {
	c, err := net.DialTimeout("tcp4", target.String(), trafficTimeout)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(trafficTimeout))
	got, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if got != hello+"\n" {
		return fmt.Errorf("hello %q, want %q", got, hello)
	}
	return echo(c, r, i)
}

// echo sends a line and checks that it comes back.
func echo(c net.Conn, r *bufio.Reader, i int) error {
	msg := "ping " + strconv.Itoa(i) + "\n"
	_ = c.SetDeadline(time.Now().Add(trafficTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	back, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if back != msg {
		return fmt.Errorf("echo %q, want %q", back, msg)
	}
	return nil
}
