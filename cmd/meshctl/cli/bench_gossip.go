package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/lab/cpuload"
)

type benchGossipConfig struct {
	members, kill int
	load          time.Duration
	// Zero means health's default.
	probeInterval, probeTimeout, gossipInterval time.Duration
	suspicionMult                               int
}

// benchGossipReport is the result of `bench gossip`; the JSON names are the
// interface scripts read.
type benchGossipReport struct {
	Members          int     `json:"members"`
	Killed           int     `json:"killed"`
	ProbeIntervalMS  float64 `json:"probe_interval_ms"`
	ProbeTimeoutMS   float64 `json:"probe_timeout_ms"`
	GossipIntervalMS float64 `json:"gossip_interval_ms"`
	SuspicionMult    int     `json:"suspicion_mult"`
	SuspicionMinS    float64 `json:"suspicion_min_s"`
	SuspicionMaxS    float64 `json:"suspicion_max_s"`
	LoadDurationS    float64 `json:"load_duration_s"`
	LoadProcesses    int     `json:"load_processes"`
	LoadCPUBusyPct   float64 `json:"load_cpu_busy_pct"`
	LoadStealPct     float64 `json:"load_steal_pct"`
	LoadMaxStallMS   float64 `json:"load_max_stall_ms"`
	SettleS          float64 `json:"settle_s"`
	FalsePositives   int     `json:"false_positives"`
	FalseUnresp      int     `json:"false_unresponsive"`
	FalseSuspects    int     `json:"false_suspects"`
	DetectFirstS     float64 `json:"detect_first_s"`
	DetectP50S       float64 `json:"detect_p50_s"`
	DetectAllS       float64 `json:"detect_all_s"`
}

// benchDetectTimeout bounds phase 2: the bench fails if a killed member is
// not seen dead by every live member by then.
const benchDetectTimeout = 60 * time.Second

func newBenchGossipCmd(o *options) *cobra.Command {
	var (
		cfg    benchGossipConfig
		format string
	)
	cmd := &cobra.Command{
		Use:   "gossip",
		Short: "Measure gossip failure detection and false positives under CPU load",
		Long: `bench gossip starts --members gossip members (package health, the agents'
memberlist settings) in this process on free ports of 127.0.0.1, with a
random key, joins them through the first and waits until every member sees
every member alive. It needs no etcd.

Phase 1, false positives: for --load-duration it keeps every CPU busy with
2 × NumCPU busy-looping /bin/sh processes (killed when the phase ends, and
ending by themselves if meshctl dies), then waits until every member sees
every member alive again (settle_s). false_suspects counts the members
some member suspected in that time, false_unresponsive those memberlist
declared dead but whose port the direct check found open (their routes
would stay), false_positives those some member reported dead (confirmed)
or left. load_max_stall_ms is the longest this process
could not run at all in that time (a 10 ms ticker's worst lateness): all
members live in it, so a stall longer than the probe interval fails every
probe under way at once. load_steal_pct is the CPU time the hypervisor
took from this machine.

Phase 2, detection: it stops --kill members without leaving (as a crash
looks to the others) and measures, for each, the time until the first live
member saw it dead (detect_first_s, the slowest killed member's) and until
every live member did (detect_all_s, the slowest's); detect_p50_s is the
median over all (killed, live member) pairs. Times are taken when the
members' Notify callbacks ran, as an agent would see them. It fails if
detection does not complete within 60 s.

suspicion_min_s and suspicion_max_s are memberlist's suspicion timeouts at
this size: with enough confirmations from other members, and with none.`,
		Example: `  meshctl bench gossip --members 50 -o json
  meshctl bench gossip --members 50 --kill 3 --load-duration 60s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if cfg.members < 2 || cfg.members > 500 || cfg.kill < 1 || cfg.kill >= cfg.members {
				return fmt.Errorf("bench gossip: use 2-500 --members and 1 to members-1 --kill")
			}
			if cfg.load < 0 || cfg.load > time.Hour {
				return fmt.Errorf("bench gossip: --load-duration %s: use 0 to 1h", cfg.load)
			}
			rep, err := o.benchGossip(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return writeReport(o.stdout, format, rep)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&cfg.members, "members", 50, "gossip members to start")
	fs.IntVar(&cfg.kill, "kill", 1, "members to stop in phase 2")
	fs.DurationVar(&cfg.load, "load-duration", 20*time.Second, "how long phase 1 keeps the CPUs busy")
	fs.DurationVar(&cfg.probeInterval, "probe-interval", 0, "override the probe interval (0: the agents' default)")
	fs.DurationVar(&cfg.probeTimeout, "probe-timeout", 0, "override the probe timeout (0: the agents' default)")
	fs.DurationVar(&cfg.gossipInterval, "gossip-interval", 0, "override the gossip interval (0: the agents' default)")
	fs.IntVar(&cfg.suspicionMult, "suspicion-mult", 0, "override the suspicion multiplier (0: the agents' default)")
	addOutputFlag(cmd, &format)
	return cmd
}

func (o *options) benchGossip(ctx context.Context, cfg benchGossipConfig) (rep benchGossipReport, err error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return rep, fmt.Errorf("bench gossip: key: %w", err)
	}
	base := health.Config{
		BindAddr: "127.0.0.1",
		Keys:     [][]byte{key},
		Meta:     health.Meta{Cluster: "bench-" + randomSuffix(6)},
		Timing: health.Timing{
			ProbeInterval:  cfg.probeInterval,
			ProbeTimeout:   cfg.probeTimeout,
			GossipInterval: cfg.gossipInterval,
			SuspicionMult:  cfg.suspicionMult,
		},
	}
	check := base
	check.Name = benchGossipName(0)
	if err := check.Validate(); err != nil {
		return rep, fmt.Errorf("bench gossip: %w", err)
	}
	obs := newGossipObserver()
	members := make([]*health.Gossip, 0, cfg.members)
	defer func() {
		var cerr error
		for _, g := range members {
			cerr = errors.Join(cerr, g.Close())
		}
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench cleanup: %w", cerr))
		}
	}()
	for i := range cfg.members {
		c := base
		c.Name = benchGossipName(i)
		c.Notify = obs.notifier(c.Name)
		g, err := health.New(c)
		if err != nil {
			return rep, fmt.Errorf("bench gossip: %w", err)
		}
		members = append(members, g)
	}
	fmt.Fprintf(o.stderr, "bench: %d gossip members on 127.0.0.1, cluster %s\n", cfg.members, base.Meta.Cluster)
	seed := []string{members[0].LocalAddr().String()}
	for _, g := range members[1:] {
		if _, err := g.Join(ctx, seed); err != nil {
			return rep, fmt.Errorf("bench gossip: %s: %w", g.Name(), err)
		}
	}
	if _, err := waitConverged(ctx, members, cfg.members, 60*time.Second); err != nil {
		return rep, fmt.Errorf("bench gossip: members did not all see each other alive: %w", err)
	}

	// Phase 1: false positives under CPU load.
	procs := 2 * runtime.NumCPU()
	fmt.Fprintf(o.stderr, "bench: phase 1: %d busy processes for %s\n", procs, cfg.load)
	obs.setPhase(phaseLoad)
	stalls := startStallMeter()
	cpu0 := cpuload.ReadCPUTimes()
	loadStart := time.Now()
	if err := runLoad(ctx, procs, cfg.load); err != nil {
		stalls.stop()
		return rep, err
	}
	loadTime := time.Since(loadStart)
	busy, steal := cpu0.PctUntil(cpuload.ReadCPUTimes())
	settle, err := waitConverged(ctx, members, cfg.members, 60*time.Second)
	maxStall := stalls.stop()
	if err != nil {
		return rep, fmt.Errorf("bench gossip: after the load: %w", err)
	}
	suspects, unresp, deads := obs.setPhase(phaseDetect)

	// Phase 2: detection.
	fmt.Fprintf(o.stderr, "bench: phase 2: stopping %d members\n", cfg.kill)
	killed := members[len(members)-cfg.kill:]
	live := members[:len(members)-cfg.kill]
	killedAt := make(map[string]time.Time, len(killed))
	for _, g := range killed {
		killedAt[g.Name()] = time.Now()
		if err := g.Close(); err != nil {
			return rep, fmt.Errorf("bench gossip: stop %s: %w", g.Name(), err)
		}
	}
	deadline := time.Now().Add(benchDetectTimeout)
	for {
		missing := obs.missing(killed, live)
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			return rep, fmt.Errorf("bench gossip: detection did not complete within %s: %s", benchDetectTimeout, missing)
		}
		select {
		case <-ctx.Done():
			return rep, fmt.Errorf("bench gossip: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	first, all, pairs := obs.detection(killedAt)
	eff := base.WithDefaults()
	shortest, longest := eff.SuspicionTimeouts(cfg.members)
	slices.Sort(pairs)
	rep = benchGossipReport{
		Members:          cfg.members,
		Killed:           cfg.kill,
		ProbeIntervalMS:  ms(eff.ProbeInterval),
		ProbeTimeoutMS:   ms(eff.ProbeTimeout),
		GossipIntervalMS: ms(eff.GossipInterval),
		SuspicionMult:    eff.SuspicionMult,
		SuspicionMinS:    round(shortest.Seconds(), 3),
		SuspicionMaxS:    round(longest.Seconds(), 3),
		LoadDurationS:    round(loadTime.Seconds(), 3),
		LoadProcesses:    procs,
		LoadCPUBusyPct:   round(busy, 1),
		LoadStealPct:     round(steal, 1),
		LoadMaxStallMS:   round(ms(maxStall), 1),
		SettleS:          round(settle.Seconds(), 3),
		FalsePositives:   deads,
		FalseUnresp:      unresp,
		FalseSuspects:    suspects,
		DetectFirstS:     round(first.Seconds(), 3),
		DetectP50S:       round(percentile(pairs, 50).Seconds(), 3),
		DetectAllS:       round(all.Seconds(), 3),
	}
	return rep, nil
}

func benchGossipName(i int) string { return "gossip-" + strconv.Itoa(i) }

// waitConverged polls until every member sees n members alive and none
// suspect, and returns how long that took.
func waitConverged(ctx context.Context, members []*health.Gossip, n int, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		lagging := ""
		for _, g := range members {
			if s := g.Stats(); s.Alive != n || s.Suspect != 0 {
				lagging = fmt.Sprintf("%s sees %d alive, %d suspect, %d dead of %d", g.Name(), s.Alive, s.Suspect, s.Dead, n)
				break
			}
		}
		if lagging == "" {
			return time.Since(start), nil
		}
		if time.Since(start) > limit {
			return 0, fmt.Errorf("after %s, %s", limit, lagging)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// runLoad keeps procs busy-looping processes running for d, then kills them
// (by PID) and reaps them.
func runLoad(ctx context.Context, procs int, d time.Duration) (err error) {
	l, err := cpuload.Start(procs)
	if err != nil {
		return fmt.Errorf("bench gossip: %w", err)
	}
	defer func() { err = errors.Join(err, l.Stop()) }()
	select {
	case <-ctx.Done():
		return fmt.Errorf("bench gossip: %w", ctx.Err())
	case <-time.After(d):
	}
	return nil
}

// stallMeter measures how late a 10 ms ticker in this process fires: the
// longest stretch in which the process, and so all members at once, could
// not run. A stall longer than the probe interval fails every probe under
// way, which the gossip cannot tell from failed members.
type stallMeter struct {
	done chan struct{}
	max  chan time.Duration
}

func startStallMeter() *stallMeter {
	s := &stallMeter{done: make(chan struct{}), max: make(chan time.Duration, 1)}
	go func() {
		const tick = 10 * time.Millisecond
		t := time.NewTicker(tick)
		defer t.Stop()
		var worst time.Duration
		last := time.Now()
		for {
			select {
			case <-s.done:
				s.max <- worst
				return
			case now := <-t.C:
				worst = max(worst, now.Sub(last)-tick)
				last = now
			}
		}
	}()
	return s
}

// stop ends the measurement and returns the longest stall.
func (s *stallMeter) stop() time.Duration {
	close(s.done)
	return <-s.max
}

// Phases of the bench, for the observer.
const (
	phaseSetup = iota
	phaseLoad
	phaseDetect
)

// gossipObserver collects what every member's Notify reported.
type gossipObserver struct {
	mu       sync.Mutex
	phase    int
	suspects map[string]bool                 // suspected in phaseLoad
	unresp   map[string]bool                 // unresponsive in phaseLoad
	deads    map[string]bool                 // dead or left in phaseLoad
	deadAt   map[string]map[string]time.Time // in phaseDetect: member → observer → when first seen dead
}

func newGossipObserver() *gossipObserver {
	return &gossipObserver{
		suspects: make(map[string]bool),
		unresp:   make(map[string]bool),
		deads:    make(map[string]bool),
		deadAt:   make(map[string]map[string]time.Time),
	}
}

func (b *gossipObserver) notifier(observer string) func(health.Member) {
	return func(m health.Member) {
		now := time.Now()
		b.mu.Lock()
		defer b.mu.Unlock()
		switch {
		case b.phase == phaseLoad && m.State == health.Suspect:
			b.suspects[m.Name] = true
		case b.phase == phaseLoad && m.State == health.Unresponsive:
			b.unresp[m.Name] = true
		case b.phase == phaseLoad && (m.State == health.Dead || m.State == health.Left):
			b.deads[m.Name] = true
		case b.phase == phaseDetect && m.State == health.Dead:
			seen := b.deadAt[m.Name]
			if seen == nil {
				seen = make(map[string]time.Time)
				b.deadAt[m.Name] = seen
			}
			if _, ok := seen[observer]; !ok {
				seen[observer] = now
			}
		}
	}
}

// setPhase moves to phase and returns how many members were suspected,
// unresponsive and dead in the phase before.
func (b *gossipObserver) setPhase(phase int) (suspects, unresp, deads int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.phase = phase
	return len(b.suspects), len(b.unresp), len(b.deads)
}

// missing describes a killed member some live member has not seen dead
// yet; "" when there is none.
func (b *gossipObserver) missing(killed, live []*health.Gossip) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range killed {
		if n := len(b.deadAt[k.Name()]); n < len(live) {
			return fmt.Sprintf("%s seen dead by %d of %d live members", k.Name(), n, len(live))
		}
	}
	return ""
}

// detection returns, over the killed members, the longest time until the
// first live member saw one dead and until all did, and every (killed,
// live member) detection time.
func (b *gossipObserver) detection(killedAt map[string]time.Time) (first, all time.Duration, pairs []time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, t0 := range killedAt {
		var lo, hi time.Duration = -1, 0
		for _, t := range b.deadAt[name] {
			d := t.Sub(t0)
			pairs = append(pairs, d)
			if lo < 0 || d < lo {
				lo = d
			}
			hi = max(hi, d)
		}
		first, all = max(first, lo), max(all, hi)
	}
	return first, all, pairs
}
