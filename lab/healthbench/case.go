package healthbench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/lab"
	"github.com/meshplane/meshplane/lab/cpuload"
)

// How long the bench waits for the lab.
const (
	removalTimeout = time.Minute      // a crashed node's backend gone everywhere
	aliveTimeout   = time.Minute      // every node reading a node alive again
	wholeTimeout   = 30 * time.Second // every map whole again
	afterRestart   = time.Second      // traffic after a restarted agent is back
	waitPoll       = 20 * time.Millisecond
)

// run is one case: a lab, its poller, and what the phases found.
type run struct {
	cfg      Config
	l        *lab.Lab
	p        *poller
	nodes    []string
	victims  []string // every node but n1, which hosts the client
	expected []window // removals that are no fault of the detector
	row      Row
	crashes  []time.Duration
}

// runCase builds the lab of a cluster of n nodes, loads the CPUs, runs the
// phases and removes the lab.
func runCase(ctx context.Context, cfg Config, n int) (row Row, crashes []time.Duration, err error) {
	o := cfg.Lab
	o.Stdout = nil
	o.AgentFlags = cfg.AgentFlags
	name := labName(n)
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := lab.Down(dctx, name, o); derr != nil {
			err = errors.Join(err, fmt.Errorf("remove lab %s (remove it with: meshctl lab down %s): %w", name, name, derr))
		}
	}()
	fmt.Fprintf(cfg.Progress, "%d nodes: building lab %s...\n", n, name)
	l, err := lab.Up(ctx, topology(name, n), o)
	if err != nil {
		return row, nil, err
	}
	r := &run{cfg: cfg, l: l, row: Row{Nodes: n}}
	for i := 1; i <= n; i++ {
		r.nodes = append(r.nodes, nodeName(i))
	}
	r.victims = r.nodes[1:]
	if r.p, err = newPoller(l, r.nodes); err != nil {
		return row, nil, errors.Join(err, r.p.stop())
	}
	defer func() { err = errors.Join(err, r.p.stop()) }()
	if err := r.p.start(); err != nil {
		return row, nil, err
	}

	var load *cpuload.Load
	loadStart := time.Now()
	if cfg.LoadProcs > 0 {
		if load, err = cpuload.Start(cfg.LoadProcs); err != nil {
			return row, nil, err
		}
		fmt.Fprintf(cfg.Progress, "%d nodes: %d busy processes load the CPUs\n", n, cfg.LoadProcs)
	}
	err = r.phases(ctx)
	if load != nil {
		err = errors.Join(err, load.Stop())
		r.row.LoadDurationS = round(time.Since(loadStart).Seconds(), 3)
		busy, _ := load.Since()
		r.row.LoadCPUBusyPct = round(busy, 1)
	}
	if err == nil {
		err = r.p.readErr()
	}
	r.row.FalseRemovals = r.p.falseRemovals(r.expected)
	slices.Sort(r.crashes)
	r.row.CrashToRemovalP50MS, r.row.CrashToRemovalP99MS, r.row.CrashToRemovalMaxMS = percentiles(r.crashes)
	return r.row, r.crashes, err
}

func (r *run) phases(ctx context.Context) error {
	if err := r.steady(ctx); err != nil {
		return fmt.Errorf("steady: %w", err)
	}
	for i := range r.cfg.Crashes {
		if err := r.crash(ctx, r.victims[i%len(r.victims)]); err != nil {
			return fmt.Errorf("crash %d: %w", i+1, err)
		}
	}
	for i := range r.cfg.Pauses {
		if err := r.pause(ctx, r.victims[i%len(r.victims)]); err != nil {
			return fmt.Errorf("pause %d: %w", i+1, err)
		}
	}
	for i := range r.cfg.Restarts {
		if err := r.restart(ctx, r.victims[i%len(r.victims)]); err != nil {
			return fmt.Errorf("restart %d: %w", i+1, err)
		}
	}
	return nil
}

func (r *run) progress(format string, args ...any) {
	fmt.Fprintf(r.cfg.Progress, "%d nodes: "+format+"\n", append([]any{r.row.Nodes}, args...)...)
}

// steady waits Duration with no fault.
func (r *run) steady(ctx context.Context) error {
	before, err := r.unconfirmed(ctx, "")
	if err != nil {
		return err
	}
	r.progress("steady for %s...", r.cfg.Duration)
	t0 := time.Now()
	if err := sleep(ctx, r.cfg.Duration); err != nil {
		return err
	}
	r.row.SteadyS = round(time.Since(t0).Seconds(), 3)
	after, err := r.unconfirmed(ctx, "")
	if err != nil {
		return err
	}
	r.row.SteadyUnconfirmedDeaths = after - before
	removed := r.p.describe(t0)
	r.progress("steady: %d removals %v, %d deaths unconfirmed", len(removed), removed, after-before)
	return nil
}

// crash kills node's agent, times until its backend and route are gone
// from every other node's maps, and starts it again.
func (r *run) crash(ctx context.Context, node string) error {
	t0 := time.Now()
	if err := r.l.KillAgent(ctx, cluster, node); err != nil {
		return err
	}
	deadline := t0.Add(removalTimeout)
	var took time.Duration
	for {
		if at, ok := r.p.gone(node, t0); ok {
			took = at.Sub(t0)
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s's backend or route still on some node %s after its agent was killed", node, removalTimeout)
		}
		if err := sleep(ctx, waitPoll); err != nil {
			return err
		}
	}
	r.crashes = append(r.crashes, took)
	r.row.Crashes++
	if err := r.l.StartAgent(ctx, cluster, node); err != nil {
		return err
	}
	if err := r.waitWhole(ctx); err != nil {
		return err
	}
	r.expected = append(r.expected, window{node: node, from: t0, to: time.Now()})
	r.progress("crash of %s: gone from every other node after %s", node, took.Round(time.Millisecond))
	return nil
}

// pause stops node's agent for Pause and continues it.
func (r *run) pause(ctx context.Context, node string) error {
	before, err := r.unconfirmed(ctx, node)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := r.l.PauseAgent(cluster, node); err != nil {
		return err
	}
	seen := r.watchHealth(ctx, node, r.cfg.Pause)
	if err := errors.Join(ctx.Err(), r.l.ResumeAgent(cluster, node)); err != nil {
		return err
	}
	if err := r.waitAlive(ctx, node); err != nil {
		return err
	}
	after, err := r.unconfirmed(ctx, node)
	if err != nil {
		return err
	}
	r.row.Pauses++
	r.row.PauseMS = round(ms(r.cfg.Pause), 1)
	r.row.PauseUnconfirmedDeaths += after - before
	r.progress("pause of %s: read as %v during it, alive again after %s, removals %v", node, seen, time.Since(t0).Round(time.Millisecond), r.p.describe(t0))
	return nil
}

// restart stops node's agent gracefully, keeps it down for RestartDown
// and starts it again, while the client connects to node's service.
func (r *run) restart(ctx context.Context, node string) error {
	c, err := r.l.Pod(namespace + "/" + client)
	if err != nil {
		return err
	}
	i := slices.Index(r.nodes, node) + 1
	hello := cluster + "/" + namespace + "/web-" + node
	target := serviceTarget(i)
	tr, err := startTraffic(c.Netns, target, hello)
	if err != nil {
		return err
	}
	res, err := func() (trafficResult, error) {
		defer tr.stop()
		t0 := time.Now()
		if err := r.l.StopAgent(ctx, cluster, node); err != nil {
			return trafficResult{}, err
		}
		if err := sleep(ctx, r.cfg.RestartDown); err != nil {
			return trafficResult{}, err
		}
		if err := r.l.StartAgent(ctx, cluster, node); err != nil {
			return trafficResult{}, err
		}
		if err := sleep(ctx, afterRestart); err != nil {
			return trafficResult{}, err
		}
		res := tr.stop()
		r.progress("restart of %s: %d connections, %d failed, %d long-lived broken, removals %v %s",
			node, res.attempts, res.failures, res.longBroken, r.p.describe(t0), strings.Join(res.errs, "; "))
		return res, nil
	}()
	if err != nil {
		return err
	}
	r.row.Restarts++
	r.row.RestartDownMS = round(ms(r.cfg.RestartDown), 1)
	r.row.RestartConnections += res.attempts
	r.row.RestartDroppedConnections += res.failures + res.longBroken
	r.row.RestartLongLivedBroken += res.longBroken
	return nil
}

// waitWhole waits until every node has every other node in its maps.
func (r *run) waitWhole(ctx context.Context) error {
	deadline := time.Now().Add(wholeTimeout)
	for !r.p.whole() {
		if time.Now().After(deadline) {
			return fmt.Errorf("the maps are not whole %s after the agent came back", wholeTimeout)
		}
		if err := sleep(ctx, waitPoll); err != nil {
			return err
		}
	}
	return nil
}

// watchHealth samples, for d, how the other nodes read node, and returns
// the distinct states each saw in order ("n1: alive suspect ...").
func (r *run) watchHealth(ctx context.Context, node string, d time.Duration) []string {
	seen := map[string][]string{}
	for end := time.Now().Add(d); time.Now().Before(end) && ctx.Err() == nil; {
		for _, obs := range r.nodes {
			if obs == node {
				continue
			}
			if h, err := r.health(ctx, obs, node); err == nil {
				if s := seen[obs]; len(s) == 0 || s[len(s)-1] != h {
					seen[obs] = append(s, h)
				}
			}
		}
		_ = sleep(ctx, 50*time.Millisecond)
	}
	var out []string
	for _, obs := range r.nodes {
		if s, ok := seen[obs]; ok {
			out = append(out, obs+": "+strings.Join(s, " "))
		}
	}
	return out
}

// waitAlive waits until every other node reads node as alive.
func (r *run) waitAlive(ctx context.Context, node string) error {
	deadline := time.Now().Add(aliveTimeout)
	for _, obs := range r.nodes {
		if obs == node {
			continue
		}
		for {
			h, err := r.health(ctx, obs, node)
			if err == nil && h == "alive" {
				break
			}
			if time.Now().After(deadline) {
				if err != nil {
					return fmt.Errorf("%s cannot tell how it reads %s %s after its pause: %w", obs, node, aliveTimeout, err)
				}
				return fmt.Errorf("%s reads %s as %q %s after its pause", obs, node, h, aliveTimeout)
			}
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// health is node's health as observer's agent reads it.
func (r *run) health(ctx context.Context, observer, node string) (string, error) {
	client, closeFn, err := r.agent(observer)
	if err != nil {
		return "", err
	}
	defer closeFn()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := client.ListNodes(cctx, &api.ListNodesRequest{})
	if err != nil {
		return "", err
	}
	for _, n := range resp.Nodes {
		if n.Name == node {
			return n.Health, nil
		}
	}
	return "", fmt.Errorf("%s does not list %s", observer, node)
}

// unconfirmed sums the deaths the agents' checks refused to confirm,
// over every node but except.
func (r *run) unconfirmed(ctx context.Context, except string) (uint64, error) {
	var sum uint64
	for _, n := range r.nodes {
		if n == except {
			continue
		}
		client, closeFn, err := r.agent(n)
		if err != nil {
			return 0, err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := client.Status(cctx, &api.StatusRequest{})
		cancel()
		closeFn()
		if err != nil {
			return 0, fmt.Errorf("status of %s: %w", n, err)
		}
		sum += st.GetGossip().GetUnconfirmedDeaths()
	}
	return sum, nil
}

// agent connects to a node's agent API.
func (r *run) agent(node string) (api.AgentClient, func(), error) {
	n, err := r.l.Node(cluster, node)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient("unix://"+n.AgentSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return api.NewAgentClient(conn), func() { _ = conn.Close() }, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
