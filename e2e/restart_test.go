package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/meshplane/meshplane/lab"
)

// dialFrom opens a TCP connection from inside a pod's network namespace
// (a socket keeps the namespace it was made in).
func dialFrom(t *testing.T, l *lab.Lab, pod string, to string) net.Conn {
	t.Helper()
	p, err := l.Pod(pod)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread enters the pod's namespace and is never handed back
		// to the runtime (it exits with the goroutine).
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(p.Netns)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp4", to, 2*time.Second)
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("dial %s from %s: %v", to, pod, r.err)
	}
	return r.c
}

// echo sends a line over c and checks it comes back.
func echo(c net.Conn, r *bufio.Reader, i int) error {
	msg := fmt.Sprintf("ping %d\n", i)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
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

// TestAgentRestartDuringTraffic restarts the agents of both nodes while a
// connection carries traffic, three times (the second and third in the
// other attachment mode, --datapath-attach): the connection keeps working (the datapath
// and its conntrack live in the kernel, pinned), and the policy holds
// throughout: a denied peer stays denied and an allowed one allowed, also
// while no agent runs.
func TestAgentRestartDuringTraffic(t *testing.T) {
	l := startLab(t)
	applyPolicies(t, l, "c1", webFromClient)
	policyHolds := []probe{
		{from: "prod/client", to: "prod/web-2", port: 80, allowed: true},
		{from: "dev/tool", to: "prod/web-2", port: 80},
		{from: "prod/db", to: "prod/web-1", port: 80},
	}
	expect(t, l, policyHolds)
	web2, err := l.Pod("prod/web-2")
	if err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, l, "prod/client", netip4Port(web2.IP.String(), 80))
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // the echo server's hello
		t.Fatal(err)
	}

	// Traffic on the connection the whole time, from another goroutine.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	sent := make(chan int, 1)
	go func() {
		i := 0
		defer func() { sent <- i }()
		for ctx.Err() == nil && i < 100000 {
			if err := echo(c, r, i); err != nil {
				errc <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			i++
			time.Sleep(2 * time.Millisecond)
		}
		errc <- nil
	}()

	sctx, scancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer scancel()
	// A plain restart, then restarts that switch the attachment mode to
	// tcx and back to tc (the default): each new agent moves every veth
	// to its mode, with the connection open.
	for _, flags := range [][]string{nil, {"--datapath-attach=tcx"}, {"--datapath-attach=tc"}} {
		for _, n := range []string{"n1", "n2"} {
			if err := l.StopAgent(sctx, "c1", n); err != nil {
				t.Fatal(err)
			}
		}
		// No agent runs anywhere: the datapath alone decides.
		checkNow(t, l, policyHolds)
		for _, n := range []string{"n2", "n1"} {
			if err := l.StartAgent(sctx, "c1", n, flags...); err != nil {
				t.Fatal(err)
			}
		}
		checkNow(t, l, policyHolds)
		// tcx pins its pods' links beside the maps; tc pins none (its
		// filters are on the veths), and removes those of tcx.
		for _, n := range []string{"n1", "n2"} {
			pins, err := filepath.Glob(filepath.Join(l.BPFFS("c1"), "meshplane", n, "links", "*-from-pod"))
			if err != nil {
				t.Fatal(err)
			}
			if tcx := slices.Contains(flags, "--datapath-attach=tcx"); tcx != (len(pins) > 0) {
				t.Errorf("node %s after a restart with %q: pinned tcx links %q", n, flags, pins)
			}
		}
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("the connection broke during the restarts: %v", err)
	}
	if n := <-sent; n < 10 {
		t.Fatalf("only %d messages went over the connection", n)
	}
	if err := echo(c, r, -1); err != nil {
		t.Fatalf("after the restarts: %v", err)
	}
}

// checkNow probes once, without waiting for state to converge: nothing
// may change while agents restart.
func checkNow(t *testing.T, l *lab.Lab, probes []probe) {
	t.Helper()
	for _, p := range probes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := l.Probe(ctx, lab.ProbeSpec{From: p.from, To: p.to, Port: p.port, Proto: p.proto, Timeout: 500 * time.Millisecond})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if res.Allowed != p.allowed {
			t.Errorf("%s during restart: allowed=%v (%s %s)", p, res.Allowed, res.Error, res.Reason)
		}
	}
}

func netip4Port(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }
