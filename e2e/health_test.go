package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/lab"
)

// The failure-detection tests: what the other nodes do when a node's
// agent restarts gracefully, pauses, or crashes. Each runs its own lab of
// testdata/health.yaml: the client on n1, the only backend of the service
// on n2.
const (
	healthClient  = "prod/client"
	healthService = "10.96.0.20:80"
	healthBackend = "c1/prod/web"
)

// startHealthLab builds the lab of testdata/health.yaml, removed when the
// test ends.
func startHealthLab(t *testing.T, agentFlags ...string) *lab.Lab {
	t.Helper()
	requireRoot(t)
	data, err := os.ReadFile("testdata/health.yaml")
	if err != nil {
		t.Fatal(err)
	}
	name := uniqueName(t)
	topo, err := lab.ParseTopology(bytes.Replace(data, []byte("name: NAME"), []byte("name: "+name), 1))
	if err != nil {
		t.Fatal(err)
	}
	setRouting(t, topo)
	meshctl, agent := binaries()
	opts := lab.Options{Meshctl: meshctl, Agent: agent, AgentFlags: agentFlags}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, topo, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := lab.Down(ctx, name, opts); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// TestGracefulRestartKeepsBackends restarts n2's agent with SIGTERM, as an
// upgrade does, and keeps it down longer than gossip takes to declare a
// silent member dead. n1 must read n2 as restarting, never dead, and keep
// n2's backend: every connection to the service during the restart
// succeeds, and a long-lived one keeps working.
func TestGracefulRestartKeepsBackends(t *testing.T) {
	l := startHealthLab(t)
	w := watchHealth(t, l, "n1", "n2")
	tr := startTraffic(t, l, healthClient, healthService)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if err := l.StopAgent(ctx, "c1", "n2"); err != nil {
		t.Fatal(err)
	}
	// The agent is down. Wait until n1 has made up its mind about n2, then
	// stay down a while longer, well past the suspicion timeout, as an
	// image pull would.
	w.waitFor(t, 20*time.Second, "n1 reads n2 as neither alive nor suspect", func(s string) bool { return s != "alive" && s != "suspect" })
	time.Sleep(3 * time.Second) // the restart's downtime: the fault, not a wait for state
	if err := l.StartAgent(ctx, "c1", "n2"); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 30*time.Second, "n1 reads n2 as alive again", func(s string) bool { return s == "alive" })
	res := tr.stop(t)
	seen := w.stop()
	t.Logf("n1 read n2 as %v; %d connections, %d failed", seen, res.attempts, res.failures)
	if !slices.Contains(seen, "restarting") {
		t.Errorf("n1 read n2 as %v during its graceful restart: want restarting", seen)
	}
	for _, s := range seen {
		if s == "dead" || s == "left" || s == "unresponsive" {
			t.Errorf("n1 read n2 as %s during its graceful restart (all: %v)", s, seen)
		}
	}
	res.check(t)
}

// TestPauseKeepsBackends stops n2's agent with SIGSTOP for 2.5 s: its
// process is alive but runs nothing, as a process starved of CPU. Gossip
// alone declares it dead within that time in a cluster of two (there is no
// other member to probe it indirectly or to confirm); n1 must find that
// n2's node is up and keep its backend: no connection fails.
func TestPauseKeepsBackends(t *testing.T) {
	l := startHealthLab(t)
	w := watchHealth(t, l, "n1", "n2")
	tr := startTraffic(t, l, healthClient, healthService)
	if err := l.PauseAgent("c1", "n2"); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = l.ResumeAgent("c1", "n2")
		}
	})
	time.Sleep(2500 * time.Millisecond) // the pause: the fault, not a wait for state
	if err := l.ResumeAgent("c1", "n2"); err != nil {
		t.Fatal(err)
	}
	resumed = true
	w.waitFor(t, 45*time.Second, "n1 reads n2 as alive after the pause", func(s string) bool { return s == "alive" })
	res := tr.stop(t)
	seen := w.stop()
	t.Logf("n1 read n2 as %v; %d connections, %d failed", seen, res.attempts, res.failures)
	for _, s := range seen {
		if s == "dead" || s == "left" {
			t.Errorf("n1 read n2 as %s during a 2.5 s pause (all: %v)", s, seen)
		}
	}
	res.check(t)
}

// TestCrashRemovesBackends kills n2's agent (SIGKILL): n1 must declare n2
// dead and take its backend out, so that connections to the service fail
// fast with no backend rather than wait on a node that may be gone; and
// put it back when the agent is back.
func TestCrashRemovesBackends(t *testing.T) {
	l := startHealthLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.KillAgent(ctx, "c1", "n2"); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, l, "n1", "n2", "dead")
	waitBackends(t, l, "n1", healthService, 0)
	if err := l.StartAgent(ctx, "c1", "n2"); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, l, "n1", "n2", "alive")
	waitBackends(t, l, "n1", healthService, 1)
}

// waitBackends waits until node's agent has n backends for the frontend.
func waitBackends(t *testing.T, l *lab.Lab, node, frontend string, n int) {
	t.Helper()
	nd, err := l.Node("c1", node)
	if err != nil {
		t.Fatal(err)
	}
	client, closeFn := agentClient(t, nd.AgentSocket)
	defer closeFn()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := backendsOf(client, frontend)
		if err == nil && got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d backends for %s (%v), want %d", node, got, frontend, err, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func backendsOf(client api.AgentClient, frontend string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := client.DumpServices(ctx, &api.DumpRequest{})
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		for _, e := range chunk.Entries {
			if e.Frontend == frontend {
				n = len(e.Backends)
			}
		}
	}
}

// agentClient connects to an agent's API socket.
func agentClient(t *testing.T, socket string) (api.AgentClient, func()) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return api.NewAgentClient(conn), func() { _ = conn.Close() }
}

// healthWatch records the distinct health states one agent reports for
// another node, in order, polling its node list.
type healthWatch struct {
	mu     sync.Mutex
	states []string // mu guards
	done   chan struct{}
	wg     sync.WaitGroup
}

func watchHealth(t *testing.T, l *lab.Lab, node, other string) *healthWatch {
	t.Helper()
	nd, err := l.Node("c1", node)
	if err != nil {
		t.Fatal(err)
	}
	client, closeFn := agentClient(t, nd.AgentSocket)
	w := &healthWatch{done: make(chan struct{})}
	w.wg.Go(func() {
		defer closeFn()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := client.ListNodes(ctx, &api.ListNodesRequest{})
			cancel()
			if err == nil {
				for _, n := range resp.Nodes {
					if n.Name == other {
						w.mu.Lock()
						if len(w.states) == 0 || w.states[len(w.states)-1] != n.Health {
							w.states = append(w.states, n.Health)
						}
						w.mu.Unlock()
					}
				}
			}
			select {
			case <-w.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	t.Cleanup(func() { w.stop() })
	return w
}

// waitFor waits until the last state recorded satisfies ok.
func (w *healthWatch) waitFor(t *testing.T, d time.Duration, what string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		w.mu.Lock()
		states := slices.Clone(w.states)
		w.mu.Unlock()
		if len(states) > 0 && ok(states[len(states)-1]) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s: states so far %v", d, what, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the watch and returns the states seen. It may be called again.
func (w *healthWatch) stop() []string {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.states)
}

// traffic is connections from a pod to a target while a fault happens:
// new ones, one after another, each answered by the backend and echoed;
// and one long-lived connection that echoes a line every 20 ms.
type traffic struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	attempts  int
	failures  int
	errs      []string // the first few failures
	longSent  int
	longError error
}

type trafficResult struct {
	attempts, failures, longSent int
	errs                         []string
	longError                    error
}

func startTraffic(t *testing.T, l *lab.Lab, pod, target string) *traffic {
	t.Helper()
	p, err := l.Pod(pod)
	if err != nil {
		t.Fatal(err)
	}
	tr := &traffic{done: make(chan struct{})}
	long := dialFrom(t, l, pod, target)
	r := bufio.NewReader(long)
	if hello, err := r.ReadString('\n'); err != nil || hello != healthBackend+"\n" {
		t.Fatalf("long-lived connection to %s: hello %q, %v", target, hello, err)
	}
	tr.wg.Go(func() {
		defer long.Close()
		for i := 0; ; i++ {
			select {
			case <-tr.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			err := echo(long, r, i)
			tr.mu.Lock()
			if err != nil {
				tr.longError = fmt.Errorf("message %d: %w", i, err)
			} else {
				tr.longSent++
			}
			tr.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	tr.wg.Go(func() {
		_ = lab.InNetns(p.Netns, func() error {
			for i := 0; ; i++ {
				select {
				case <-tr.done:
					return nil
				case <-time.After(20 * time.Millisecond):
				}
				err := connectOnce(target, i)
				tr.mu.Lock()
				tr.attempts++
				if err != nil {
					tr.failures++
					if len(tr.errs) < 5 {
						tr.errs = append(tr.errs, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
					}
				}
				tr.mu.Unlock()
			}
		})
	})
	t.Cleanup(func() { tr.stop(t) })
	return tr
}

// connectOnce opens a connection to target (from the thread's namespace),
// checks the backend's hello and an echo, and closes it.
func connectOnce(target string, i int) error {
	c, err := net.DialTimeout("tcp4", target, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	hello, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if hello != healthBackend+"\n" {
		return fmt.Errorf("hello %q, want %q", hello, healthBackend)
	}
	return echo(c, r, i)
}

func (tr *traffic) stop(t *testing.T) trafficResult {
	select {
	case <-tr.done:
	default:
		close(tr.done)
	}
	tr.wg.Wait()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return trafficResult{attempts: tr.attempts, failures: tr.failures, longSent: tr.longSent, errs: slices.Clone(tr.errs), longError: tr.longError}
}

// check fails the test if any connection failed.
func (r trafficResult) check(t *testing.T) {
	t.Helper()
	if r.attempts < 10 || r.longSent < 10 {
		t.Errorf("only %d connections and %d messages on the long-lived one were tried", r.attempts, r.longSent)
	}
	if r.failures > 0 {
		t.Errorf("%d of %d connections to the service failed; the first: %v", r.failures, r.attempts, r.errs)
	}
	if r.longError != nil {
		t.Errorf("the long-lived connection broke: %v", r.longError)
	}
}

// TestAgentGossipFlags runs the mesh-agent binary with bad gossip timings:
// it must exit 2 before touching anything, with a message that names the
// flag and says what to use; and the lab's agents accept good ones.
func TestAgentGossipFlags(t *testing.T) {
	requireRoot(t)
	_, agent := binaries()
	// The endpoint is never dialled: the configuration fails first.
	base := []string{"--node-name", "n1", "--node-ip", "10.0.0.1", "--gossip-insecure", "--state-dir", t.TempDir(), "--bpffs", t.TempDir(),
		"--etcd-endpoints", "http://127.0.0.1:2379"}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--gossip-probe-timeout", "400ms"}, "--gossip-probe-timeout: probe timeout 400ms is not shorter than the probe interval 300ms"},
		{[]string{"--gossip-restart-grace", "-5s"}, "--gossip-restart-grace: restart grace -5s is negative"},
		{[]string{"--gossip-check-timeout", "90s"}, "--gossip-check-timeout"},
		{[]string{"--gossip-suspicion-mult", "0.5"}, "--gossip-suspicion-mult"},
		// No etcd: the agent does not start one of its own.
		{[]string{"--etcd-endpoints="}, "no etcd endpoints: pass --etcd-endpoints (or MESHPLANE_ETCD_ENDPOINTS)"},
	} {
		t.Run(strings.Join(tt.args, "="), func(t *testing.T) {
			cmd := exec.Command(agent, append(slices.Clone(base), tt.args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("mesh-agent %v: %v, want exit status 2; output:\n%s", tt.args, err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("mesh-agent %v said %q, want it to say %q", tt.args, out, tt.want)
			}
		})
	}
	// Good values reach running agents: a lab whose agents probe more
	// slowly and keep a restarting node for 10s still comes up.
	l := startHealthLab(t, "--gossip-probe-interval=400ms", "--gossip-probe-timeout=200ms", "--gossip-restart-grace=10s")
	waitHealth(t, l, "n1", "n2", "alive")
}
