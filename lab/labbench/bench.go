package labbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/meshplane/meshplane/lab"
)

// The enforcers Config.Enforcers may name.
const (
	EnforcerEBPF     = "ebpf"
	EnforcerIPTables = "iptables"
)

// Defaults of Config's zero values.
const (
	DefaultDuration        = 3 * time.Second
	DefaultWarmup          = 500 * time.Millisecond
	DefaultWorkers         = 2
	DefaultRounds          = 1
	DefaultRRCount         = 20000
	DefaultRRSize          = 1
	DefaultApplies         = 50
	DefaultIPTablesRestore = "iptables-restore"
)

// Limits of Config, so that a typo cannot ask for hours or for more than
// the agent's maps hold (bpf.DefaultPolicyMax, bpf.DefaultServicesMax: a
// service takes two slots).
const (
	MaxRules    = 100000
	MaxServices = 30000
	maxDuration = time.Minute
	maxRRCount  = 1000000
	maxRRSize   = 64 << 10
	maxWorkers  = 64
	maxRounds   = 20
	maxApplies  = 1000
)

// DefaultCases are the rows of the issue: 0, 1k and 10k rules with one
// service, 10k services without rules, and both at 10k.
var DefaultCases = []Case{{0, 1}, {1000, 1}, {10000, 1}, {0, 10000}, {10000, 10000}}

// ErrConfig is wrapped by every error about a Config.
var ErrConfig = errors.New("invalid datapath bench config")

// Case is one state of both labs: how many never-matching policy rules
// guard the server and how many services exist.
type Case struct {
	Rules    int
	Services int
}

// String is "RULES/SERVICES", the form ParseCase reads.
func (c Case) String() string { return strconv.Itoa(c.Rules) + "/" + strconv.Itoa(c.Services) }

// ParseCase reads "RULES/SERVICES", like "10000/1".
func ParseCase(s string) (Case, error) {
	var c Case
	if _, err := fmt.Sscanf(s, "%d/%d", &c.Rules, &c.Services); err != nil || c.String() != s {
		return c, fmt.Errorf("%w: case %q: write RULES/SERVICES, like 10000/1", ErrConfig, s)
	}
	return c, c.validate()
}

func (c Case) validate() error {
	if c.Rules < 0 || c.Rules > MaxRules || c.Services < 1 || c.Services > MaxServices {
		return fmt.Errorf("%w: case %s: use 0-%d rules and 1-%d services", ErrConfig, c, MaxRules, MaxServices)
	}
	return nil
}

// Config configures Run. The zero value runs the benchmark.
type Config struct {
	// Enforcers to compare, in this order. Empty means ebpf and iptables.
	Enforcers []string
	// Routing are the routing modes between the nodes (lab.RoutingNative,
	// lab.RoutingTunnel) the ebpf enforcer is measured in, each in a lab
	// of its own; iptables runs native routing only (without the eBPF
	// datapath there is no tunnel). Empty means both, native first: the
	// tunnel rows then carry their cost as ratios to native.
	Routing []string
	// Cases are the rows, measured in order, each on every enforcer
	// before the next. Empty means DefaultCases.
	Cases []Case
	// Duration is how long each connection-rate measurement runs. Zero
	// means DefaultDuration (3s).
	Duration time.Duration
	// Warmup runs before each connection-rate measurement; a tenth of
	// RRCount ping-pongs run before each latency measurement. Zero means
	// DefaultWarmup (0.5s).
	Warmup time.Duration
	// Rounds is how many times each row is measured; the enforcers take
	// turns, round by round, so that load from outside the bench falls on
	// both alike, and a row reports the median of its rounds. Zero means
	// DefaultRounds (1).
	Rounds int
	// Workers is the number of parallel connect loops. Zero means
	// DefaultWorkers (2).
	Workers int
	// RRCount is the number of timed ping-pongs. Zero means
	// DefaultRRCount (20000).
	RRCount int
	// RRSize is the size of each ping and pong in bytes. Zero means
	// DefaultRRSize (1).
	RRSize int
	// Applies is the number of timed policy applies (ebpf only). Zero
	// means DefaultApplies (50); negative means none.
	Applies int
	// IPTablesRestore is the iptables-restore binary: its backend (nft or
	// legacy) is the one measured. Zero means DefaultIPTablesRestore.
	IPTablesRestore string
	// AllowByIPBlock makes the ebpf lab's allow of the client an ipBlock
	// of the client's /32 instead of a podSelector: each new connection
	// then takes the datapath's slowest policy path (the identity lookups
	// find nothing, the CIDR map gives the client's CIDR identity, a third
	// policy lookup allows it). False measures the selector path.
	AllowByIPBlock bool

	// Lab says where the labs live and which binaries they run
	// (AgentFlags and Stdout are the bench's own).
	Lab lab.Options
	// Progress receives progress lines. Nil discards them.
	Progress io.Writer
}

func (c Config) withDefaults() (Config, error) {
	if len(c.Enforcers) == 0 {
		c.Enforcers = []string{EnforcerEBPF, EnforcerIPTables}
	}
	if len(c.Cases) == 0 {
		c.Cases = DefaultCases
	}
	if len(c.Routing) == 0 {
		c.Routing = []string{lab.RoutingNative, lab.RoutingTunnel}
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Warmup == 0 {
		c.Warmup = DefaultWarmup
	}
	def(&c.Workers, DefaultWorkers)
	def(&c.Rounds, DefaultRounds)
	def(&c.RRCount, DefaultRRCount)
	def(&c.RRSize, DefaultRRSize)
	def(&c.Applies, DefaultApplies)
	if c.IPTablesRestore == "" {
		c.IPTablesRestore = DefaultIPTablesRestore
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	seen := map[string]bool{}
	for _, e := range c.Enforcers {
		if e != EnforcerEBPF && e != EnforcerIPTables || seen[e] {
			return c, fmt.Errorf("%w: enforcers %v: name ebpf and/or iptables, each once", ErrConfig, c.Enforcers)
		}
		seen[e] = true
	}
	seenRouting := map[string]bool{}
	for _, r := range c.Routing {
		if r != lab.RoutingNative && r != lab.RoutingTunnel || seenRouting[r] {
			return c, fmt.Errorf("%w: routing %v: name native and/or tunnel, each once", ErrConfig, c.Routing)
		}
		seenRouting[r] = true
	}
	for _, cs := range c.Cases {
		if err := cs.validate(); err != nil {
			return c, err
		}
	}
	switch {
	case c.Duration < 0 || c.Duration > maxDuration || c.Warmup < 0 || c.Warmup > maxDuration:
		return c, fmt.Errorf("%w: duration %s, warmup %s: use up to %s", ErrConfig, c.Duration, c.Warmup, maxDuration)
	case c.Workers < 1 || c.Workers > maxWorkers:
		return c, fmt.Errorf("%w: %d workers: use 1-%d", ErrConfig, c.Workers, maxWorkers)
	case c.Rounds < 1 || c.Rounds > maxRounds:
		return c, fmt.Errorf("%w: %d rounds: use 1-%d", ErrConfig, c.Rounds, maxRounds)
	case c.RRCount < 1 || c.RRCount > maxRRCount || c.RRSize < 1 || c.RRSize > maxRRSize:
		return c, fmt.Errorf("%w: %d ping-pongs of %d bytes: use 1-%d of 1-%d bytes", ErrConfig, c.RRCount, c.RRSize, maxRRCount, maxRRSize)
	case c.Applies > maxApplies:
		return c, fmt.Errorf("%w: %d applies: use at most %d", ErrConfig, c.Applies, maxApplies)
	}
	return c, nil
}

// Row is one measurement: one enforcer in one Case. The JSON names are
// the interface scripts read.
type Row struct {
	Enforcer string `json:"enforcer"`
	// Routing is the routing mode between the nodes: native or tunnel.
	Routing  string `json:"routing"`
	Rules    int    `json:"rules"`
	Services int    `json:"services"`
	// ConnPerS, RRP50US and RRP99US are each the median of the rounds.
	ConnPerS float64 `json:"conn_per_s"`
	RRP50US  float64 `json:"rr_p50_us"`
	RRP99US  float64 `json:"rr_p99_us"`
	// AgentCPUPct is the CPU time the lab's agents used during the
	// connection-rate measurements, in percent of their wall time (100:
	// one core busy). It is part of the enforcer's cost: the eBPF
	// datapath reports every new connection to its agent.
	AgentCPUPct float64 `json:"agent_cpu_pct"`
	// ConnErrors counts connections of the rate measurements that failed
	// (refused, timed out, reset), over all rounds; they are not in
	// ConnPerS.
	ConnErrors int `json:"conn_errors"`
	// ApplyS is how long the Case took to be in force, from the first
	// write (etcd, or iptables-restore) to the check of the maps.
	ApplyS float64 `json:"apply_s"`
	// The tunnel's cost, on ebpf tunnel rows when the same run measured
	// ebpf with native routing: this row's conn/s and latencies divided
	// by the native row's of the same case (conn/s below 1 and latency
	// above 1 are the tunnel's overhead).
	ConnPerSVsNativeRatio float64 `json:"conn_per_s_vs_native_ratio,omitempty"`
	RRP50VsNativeRatio    float64 `json:"rr_p50_vs_native_ratio,omitempty"`
	RRP99VsNativeRatio    float64 `json:"rr_p99_vs_native_ratio,omitempty"`
}

// Report is the result of Run.
type Report struct {
	Rows []Row `json:"rows"`
	// Rounds is how many times each row was measured.
	Rounds int `json:"rounds"`
	// PolicyApplyP50MS and PolicyApplyP99MS are from a policy's put into
	// etcd until every node's pinned policy map enforces it (ebpf only;
	// zero without it, or with no applies).
	PolicyApplyP50MS float64 `json:"policy_apply_p50_ms"`
	PolicyApplyP99MS float64 `json:"policy_apply_p99_ms"`
	PolicyApplyMaxMS float64 `json:"policy_apply_max_ms"`
	// PolicyApplies is the number of timed applies.
	PolicyApplies int `json:"policy_applies"`
	// IPTablesVersion is what iptables-restore --version says, backend
	// included ("iptables-restore v1.8.9 (nf_tables)").
	IPTablesVersion string `json:"iptables_version,omitempty"`
}

// enforcer is one lab set up for one way of enforcing. Its methods are
// called from one goroutine.
type enforcer interface {
	// name is EnforcerEBPF or EnforcerIPTables.
	name() string
	// base is the lab and its pods.
	base() *bench
	// apply brings the lab to c and returns once the enforcement is in
	// place.
	apply(ctx context.Context, c Case) error
	// close releases what the enforcer holds open (not the lab).
	close() error
}

// bench is what both enforcers share: the lab, its routing mode and its
// pods.
type bench struct {
	l                     *lab.Lab
	routing               string
	client, other, server lab.Pod
}

// setup is one lab of the run: an enforcer in a routing mode.
type setup struct{ enforcer, routing string }

// setups are the labs cfg asks for, in order: ebpf in each routing mode,
// iptables in native routing.
func (c Config) setups() []setup {
	var out []setup
	for _, e := range c.Enforcers {
		if e != EnforcerEBPF {
			out = append(out, setup{e, lab.RoutingNative})
			continue
		}
		for _, r := range c.Routing {
			out = append(out, setup{e, r})
		}
	}
	return out
}

// The lab's cluster, namespace and pods.
const (
	cluster   = "bench"
	namespace = "bench"
	node1     = "node1"
	node2     = "node2"
	echoPort  = 80
)

// topology is a lab of one cluster with two nodes on one L2 segment,
// routing between them as routing says: the client and the other pod on
// node1, the server on node2.
func topology(name, routing string) *lab.Topology {
	return &lab.Topology{
		Name: name, Routing: routing,
		Clusters: []lab.Cluster{{
			Name: cluster, ID: 1, PodCIDR: "10.244.0.0/16",
			Namespaces: []lab.Namespace{{Name: namespace}},
			Nodes: []lab.NodeSpec{
				{Name: node1, Pods: []lab.PodSpec{
					{Name: "client", Namespace: namespace, Labels: map[string]string{"app": "client"}},
					{Name: "other", Namespace: namespace, Labels: map[string]string{"app": "other"}},
				}},
				{Name: node2, Pods: []lab.PodSpec{
					{Name: "server", Namespace: namespace, Labels: map[string]string{"app": "server"},
						Ports: []lab.PortSpec{{Name: "http", Port: echoPort}}},
				}},
			},
		}},
	}
}

// clusterIP is the address of service i: 10.96.0.1 and up.
func clusterIP(i int) netip.Addr { return addrAdd(netip.AddrFrom4([4]byte{10, 96, 0, 1}), i) }

// ruleCIDR is the source of rule i: 172.16.0.1/32 and up, which no
// traffic of the lab uses.
func ruleCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(addrAdd(netip.AddrFrom4([4]byte{172, 16, 0, 1}), i), 32)
}

func addrAdd(a netip.Addr, n int) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Run builds a lab per enforcer, measures every Case on each, measures
// policy applies on the ebpf lab, and removes the labs. It needs root, a
// bpffs, and iptables-restore for the iptables enforcer.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return rep, err
	}
	if slices.Contains(cfg.Enforcers, EnforcerIPTables) {
		if rep.IPTablesVersion, err = iptablesVersion(ctx, cfg.IPTablesRestore); err != nil {
			return rep, err
		}
	}
	var (
		enforcers []enforcer
		ebpf      *ebpfLab
	)
	defer func() {
		// Down with a ctx of its own: an interrupt must not leave the
		// labs behind.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		for _, e := range enforcers {
			err = errors.Join(err, e.close())
		}
		for _, su := range cfg.setups() {
			name := labName(su)
			if derr := lab.Down(dctx, name, cfg.Lab); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove lab %s (remove it with: meshctl lab down %s): %w", name, name, derr))
			}
		}
	}()
	for _, su := range cfg.setups() {
		b, err := up(ctx, cfg, su)
		if err != nil {
			return rep, err
		}
		switch su.enforcer {
		case EnforcerEBPF:
			var e *ebpfLab
			e, err = newEBPFLab(ctx, b, cfg.AllowByIPBlock)
			if e != nil {
				enforcers = append(enforcers, e)
				if ebpf == nil {
					ebpf = e // the policy applies are timed on the first
				}
			}
		case EnforcerIPTables:
			enforcers = append(enforcers, newIPTablesLab(b, cfg.IPTablesRestore))
		}
		if err != nil {
			return rep, err
		}
	}
	rep.Rounds = cfg.Rounds
	for _, c := range cfg.Cases {
		rows, err := measureCase(ctx, cfg, enforcers, c)
		if err != nil {
			return rep, fmt.Errorf("%d rules, %d services: %w", c.Rules, c.Services, err)
		}
		tunnelCost(rows)
		rep.Rows = append(rep.Rows, rows...)
	}
	if ebpf != nil && cfg.Applies > 0 {
		fmt.Fprintf(cfg.Progress, "ebpf: timing %d policy applies...\n", cfg.Applies)
		lat, err := ebpf.timeApplies(ctx, cfg.Applies)
		if err != nil {
			return rep, fmt.Errorf("policy apply: %w", err)
		}
		slices.Sort(lat)
		rep.PolicyApplies = len(lat)
		rep.PolicyApplyP50MS = round(ms(percentile(lat, 50)), 2)
		rep.PolicyApplyP99MS = round(ms(percentile(lat, 99)), 2)
		rep.PolicyApplyMaxMS = round(ms(lat[len(lat)-1]), 2)
	}
	return rep, nil
}

// tunnelCost sets the ratios of the ebpf tunnel rows to the ebpf native
// row of the same case, if there is one.
func tunnelCost(rows []Row) {
	var native *Row
	for i := range rows {
		if rows[i].Enforcer == EnforcerEBPF && rows[i].Routing == lab.RoutingNative {
			native = &rows[i]
		}
	}
	if native == nil {
		return
	}
	ratio := func(v, n float64) float64 {
		if n == 0 {
			return 0
		}
		return round(v/n, 3)
	}
	for i := range rows {
		r := &rows[i]
		if r.Enforcer == EnforcerEBPF && r.Routing == lab.RoutingTunnel {
			r.ConnPerSVsNativeRatio = ratio(r.ConnPerS, native.ConnPerS)
			r.RRP50VsNativeRatio = ratio(r.RRP50US, native.RRP50US)
			r.RRP99VsNativeRatio = ratio(r.RRP99US, native.RRP99US)
		}
	}
}

// labName is the name of a setup's lab: unique per process, at most 16
// characters. ebpf with native routing is "e", with the tunnel "t",
// iptables "i".
func labName(su setup) string {
	code := su.enforcer[:1]
	if su.enforcer == EnforcerEBPF && su.routing == lab.RoutingTunnel {
		code = "t"
	}
	return "bench-" + code + "-" + strconv.Itoa(os.Getpid())
}

// label names a setup in progress lines: "ebpf", "ebpf/tunnel".
func (su setup) label() string {
	if su.routing == lab.RoutingTunnel {
		return su.enforcer + "/" + su.routing
	}
	return su.enforcer
}

// up builds the lab of a setup and finds its pods.
func up(ctx context.Context, cfg Config, su setup) (*bench, error) {
	o := cfg.Lab
	o.Stdout = nil
	o.AgentFlags = nil
	if su.enforcer == EnforcerIPTables {
		o.AgentFlags = []string{"--datapath=none"}
	}
	name := labName(su)
	enforcer := su.label()
	fmt.Fprintf(cfg.Progress, "%s: building lab %s...\n", enforcer, name)
	l, err := lab.Up(ctx, topology(name, su.routing), o)
	if err != nil {
		return nil, fmt.Errorf("%s lab: %w", enforcer, err)
	}
	b := &bench{l: l, routing: su.routing}
	for _, p := range []struct {
		ref string
		pod *lab.Pod
	}{{"client", &b.client}, {"other", &b.other}, {"server", &b.server}} {
		if *p.pod, err = l.Pod(namespace + "/" + p.ref); err != nil {
			return nil, err
		}
	}
	if err := widenPorts(b.client.Netns); err != nil {
		return nil, fmt.Errorf("%s lab: %w", enforcer, err)
	}
	return b, nil
}

// measureCase brings every enforcer's lab to c, checks that the client
// gets through and the other pod does not, and measures them in turns,
// round by round.
func measureCase(ctx context.Context, cfg Config, enforcers []enforcer, c Case) ([]Row, error) {
	target := netip.AddrPortFrom(clusterIP(c.Services-1), echoPort)
	rows := make([]Row, len(enforcers))
	for i, e := range enforcers {
		rows[i] = Row{Enforcer: e.name(), Routing: e.base().routing, Rules: c.Rules, Services: c.Services}
		fmt.Fprintf(cfg.Progress, "%s: %d rules, %d services: applying...\n", labelOf(e), c.Rules, c.Services)
		start := time.Now()
		if err := e.apply(ctx, c); err != nil {
			return nil, fmt.Errorf("%s: %w", labelOf(e), err)
		}
		rows[i].ApplyS = round(time.Since(start).Seconds(), 3)
		if err := e.base().check(ctx, target); err != nil {
			return nil, fmt.Errorf("%s: %w", labelOf(e), err)
		}
	}
	samples := make([]struct {
		conn, p50, p99 []float64
		agentCPU, wall time.Duration
	}, len(enforcers))
	for r := range cfg.Rounds {
		for i, e := range enforcers {
			b := e.base()
			agents, err := b.agentPIDs()
			if err != nil {
				return nil, err
			}
			cpu0 := cpuTime(agents)
			conn, err := connRate(ctx, b.client.Netns, target, cfg.Workers, cfg.Warmup, cfg.Duration)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", labelOf(e), err)
			}
			// The warm-up is in the CPU time, so in the wall time too.
			samples[i].agentCPU += cpuTime(agents) - cpu0
			samples[i].wall += conn.took + cfg.Warmup
			client := b.client
			lat, err := requestResponse(ctx, client.Netns, target, cfg.RRCount, cfg.RRSize)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", labelOf(e), err)
			}
			slices.Sort(lat)
			s := &samples[i]
			s.conn = append(s.conn, float64(conn.n)/conn.took.Seconds())
			s.p50 = append(s.p50, us(percentile(lat, 50)))
			s.p99 = append(s.p99, us(percentile(lat, 99)))
			rows[i].ConnErrors += conn.errs
			failed := ""
			if conn.errs > 0 {
				failed = fmt.Sprintf(" (%d connections failed, the last: %v)", conn.errs, conn.lastErr)
			}
			fmt.Fprintf(cfg.Progress, "%s: %d rules, %d services, round %d: %.0f conn/s%s, rr p50 %.1f µs, p99 %.1f µs\n",
				labelOf(e), c.Rules, c.Services, r+1, s.conn[r], failed, s.p50[r], s.p99[r])
		}
	}
	for i := range rows {
		rows[i].ConnPerS = round(median(samples[i].conn), 1)
		rows[i].RRP50US = round(median(samples[i].p50), 1)
		rows[i].RRP99US = round(median(samples[i].p99), 1)
		rows[i].AgentCPUPct = round(100*samples[i].agentCPU.Seconds()/samples[i].wall.Seconds(), 1)
	}
	return rows, nil
}

// labelOf names an enforcer's lab in progress lines and errors.
func labelOf(e enforcer) string { return setup{e.name(), e.base().routing}.label() }

// median of v (the mean of the middle two for an even count); v is
// sorted in place.
func median(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// agentPIDs are the PIDs of the lab's agents.
func (b *bench) agentPIDs() ([]int, error) {
	var pids []int
	for _, n := range []string{node1, node2} {
		pid, err := b.l.AgentPID(cluster, n)
		if err != nil {
			return nil, err
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// probeTimeout bounds the checks' probes; a denied one waits this long.
const probeTimeout = 300 * time.Millisecond

// check probes target from the client (it must be answered by the
// server) and from the other pod (it must be denied).
func (b *bench) check(ctx context.Context, target netip.AddrPort) error {
	res, err := b.l.Probe(ctx, lab.ProbeSpec{From: b.client.Ref(), To: target.Addr().String(), Port: target.Port(), Timeout: 2 * time.Second})
	if err != nil {
		return err
	}
	if !res.Allowed || res.Answered != b.server.Ref() {
		return fmt.Errorf("the client's probe to %s was not answered by the server: %+v", target, res)
	}
	res, err = b.l.Probe(ctx, lab.ProbeSpec{From: b.other.Ref(), To: target.Addr().String(), Port: target.Port(), Timeout: probeTimeout})
	if err != nil {
		return err
	}
	if res.Allowed {
		return fmt.Errorf("the other pod's probe to %s was allowed: the policy is not enforced", target)
	}
	return nil
}

// percentile returns the nearest-rank p-th percentile of sorted d.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func round(v float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(v*p) / p
}
