package healthbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/meshplane/meshplane/lab"
	"github.com/meshplane/meshplane/lab/cpuload"
)

// Defaults of Config's zero values.
const (
	DefaultDuration    = time.Minute
	DefaultCrashes     = 10
	DefaultPauses      = 3
	DefaultPause       = 2500 * time.Millisecond
	DefaultRestarts    = 5
	DefaultRestartDown = 5 * time.Second
)

// DefaultNodes are the cluster sizes of the issue: three nodes, and the
// two-node case, which has no indirect probes.
var DefaultNodes = []int{3, 2}

// Limits of Config, so that a typo cannot ask for days.
const (
	minNodes, maxNodes = 2, 8
	maxCases           = 4
	maxDuration        = time.Hour
	maxCount           = 1000
	maxPause           = time.Minute
	maxRestartDown     = 10 * time.Minute
	maxLoadProcs       = 256
)

// ErrConfig is wrapped by every error about a Config.
var ErrConfig = errors.New("invalid health bench config")

// Config configures Run. The zero value runs the default benchmark.
type Config struct {
	// Nodes are the cluster sizes, one lab each, measured in turn. Empty
	// means DefaultNodes (3, 2).
	Nodes []int
	// Duration is the steady phase: no fault, CPUs loaded. Zero means
	// DefaultDuration (1m).
	Duration time.Duration
	// Crashes, Pauses and Restarts are how many of each fault each case
	// gets. Zero means the default (10, 3, 5); negative means none.
	Crashes, Pauses, Restarts int
	// Pause is how long a paused agent stays stopped (SIGSTOP). Zero
	// means DefaultPause (2.5s).
	Pause time.Duration
	// RestartDown is how long a gracefully stopped agent stays down before
	// it is started again. Zero means DefaultRestartDown (5s).
	RestartDown time.Duration
	// LoadProcs is the number of busy-looping processes that load the CPUs
	// during each case. Zero means cpuload.DefaultProcs() (2 per CPU);
	// negative means no load.
	LoadProcs int
	// AgentFlags are extra mesh-agent flags (gossip timings to compare).
	AgentFlags []string
	// Lab says where the labs live and which binaries they run
	// (AgentFlags and Stdout are the bench's own).
	Lab lab.Options
	// Progress receives progress lines. Nil discards them.
	Progress io.Writer
}

func (c Config) withDefaults() (Config, error) {
	if len(c.Nodes) == 0 {
		c.Nodes = DefaultNodes
	}
	def := func(v *int, d int) {
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			*v = 0
		}
	}
	def(&c.Crashes, DefaultCrashes)
	def(&c.Pauses, DefaultPauses)
	def(&c.Restarts, DefaultRestarts)
	def(&c.LoadProcs, cpuload.DefaultProcs())
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Pause == 0 {
		c.Pause = DefaultPause
	}
	if c.RestartDown == 0 {
		c.RestartDown = DefaultRestartDown
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if len(c.Nodes) > maxCases {
		return c, fmt.Errorf("%w: %d cluster sizes: measure at most %d", ErrConfig, len(c.Nodes), maxCases)
	}
	for _, n := range c.Nodes {
		if n < minNodes || n > maxNodes {
			return c, fmt.Errorf("%w: a cluster of %d nodes: use %d-%d", ErrConfig, n, minNodes, maxNodes)
		}
	}
	switch {
	case c.Duration < 0 || c.Duration > maxDuration:
		return c, fmt.Errorf("%w: duration %s: use up to %s", ErrConfig, c.Duration, maxDuration)
	case c.Crashes > maxCount || c.Pauses > maxCount || c.Restarts > maxCount:
		return c, fmt.Errorf("%w: %d crashes, %d pauses, %d restarts: at most %d of each", ErrConfig, c.Crashes, c.Pauses, c.Restarts, maxCount)
	case c.Pause < 0 || c.Pause > maxPause:
		return c, fmt.Errorf("%w: pause %s: use up to %s", ErrConfig, c.Pause, maxPause)
	case c.RestartDown < 0 || c.RestartDown > maxRestartDown:
		return c, fmt.Errorf("%w: restart downtime %s: use up to %s", ErrConfig, c.RestartDown, maxRestartDown)
	case c.LoadProcs > maxLoadProcs:
		return c, fmt.Errorf("%w: %d load processes: use at most %d", ErrConfig, c.LoadProcs, maxLoadProcs)
	}
	return c, nil
}

// Row is one cluster size. The JSON names are the interface scripts read;
// each ends in its unit, or names a count.
type Row struct {
	Nodes int `json:"nodes"`
	// LoadDurationS is how long the CPUs were loaded in this case, and
	// LoadCPUBusyPct how busy they were meanwhile (100: all saturated).
	LoadDurationS  float64 `json:"load_duration_s"`
	LoadCPUBusyPct float64 `json:"load_cpu_busy_pct"`
	// SteadyS is the length of the fault-free phase.
	SteadyS float64 `json:"steady_s"`
	// FalseRemovals counts removals of a live node's backend or route
	// from another node's maps, in every phase.
	FalseRemovals int `json:"false_removals"`
	// SteadyUnconfirmedDeaths counts deaths memberlist declared in the
	// steady phase that the direct check refused to confirm.
	SteadyUnconfirmedDeaths uint64 `json:"steady_unconfirmed_deaths"`
	// Crashes and the time from a kill until the node's backend and route
	// were gone from every other node's maps.
	Crashes             int     `json:"crashes"`
	CrashToRemovalP50MS float64 `json:"crash_to_removal_p50_ms"`
	CrashToRemovalP99MS float64 `json:"crash_to_removal_p99_ms"`
	CrashToRemovalMaxMS float64 `json:"crash_to_removal_max_ms"`
	// Pauses of PauseMS each, and the deaths memberlist declared during
	// them that the check refused to confirm.
	Pauses                 int     `json:"pauses"`
	PauseMS                float64 `json:"pause_ms"`
	PauseUnconfirmedDeaths uint64  `json:"pause_unconfirmed_deaths"`
	// Restarts with RestartDownMS of downtime each; the connections tried
	// through the restarting node's service, and those that failed
	// (new ones that failed plus long-lived ones that broke).
	Restarts                  int     `json:"restarts"`
	RestartDownMS             float64 `json:"restart_down_ms"`
	RestartConnections        int     `json:"restart_connections"`
	RestartDroppedConnections int     `json:"restart_dropped_connections"`
	RestartLongLivedBroken    int     `json:"restart_long_lived_broken"`
}

// Report is the result of Run: a row per cluster size, and the figures of
// the issue over all of them.
type Report struct {
	Rows []Row `json:"rows"`
	// CPUs is the machine's; LoadProcesses the busy processes per case.
	CPUs          int `json:"cpus"`
	LoadProcesses int `json:"load_processes"`
	// LoadDurationS is the total time under load.
	LoadDurationS float64 `json:"load_duration_s"`
	// FalseRemovals and RestartDroppedConnections are the rows' sums.
	FalseRemovals             int `json:"false_removals"`
	RestartDroppedConnections int `json:"restart_dropped_connections"`
	// Crashes and the percentiles of crash to removal over all of them.
	Crashes             int     `json:"crashes"`
	CrashToRemovalP50MS float64 `json:"crash_to_removal_p50_ms"`
	CrashToRemovalP99MS float64 `json:"crash_to_removal_p99_ms"`
	CrashToRemovalMaxMS float64 `json:"crash_to_removal_max_ms"`
}

// Run measures every cluster size of cfg and removes the labs. It needs
// root and a bpffs.
func Run(ctx context.Context, cfg Config) (Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Report{}, err
	}
	rep := Report{CPUs: runtime.NumCPU(), LoadProcesses: max(cfg.LoadProcs, 0)}
	var crashes []time.Duration
	for _, n := range cfg.Nodes {
		row, times, err := runCase(ctx, cfg, n)
		if err != nil {
			return rep, fmt.Errorf("%d nodes: %w", n, err)
		}
		rep.Rows = append(rep.Rows, row)
		crashes = append(crashes, times...)
		rep.LoadDurationS = round(rep.LoadDurationS+row.LoadDurationS, 3)
		rep.FalseRemovals += row.FalseRemovals
		rep.RestartDroppedConnections += row.RestartDroppedConnections
	}
	slices.Sort(crashes)
	rep.Crashes = len(crashes)
	rep.CrashToRemovalP50MS, rep.CrashToRemovalP99MS, rep.CrashToRemovalMaxMS = percentiles(crashes)
	return rep, nil
}

// percentiles returns p50, p99 and the max of sorted d, in milliseconds.
func percentiles(sorted []time.Duration) (p50, p99, maxMS float64) {
	if len(sorted) == 0 {
		return 0, 0, 0
	}
	return round(ms(percentile(sorted, 50)), 1), round(ms(percentile(sorted, 99)), 1), round(ms(sorted[len(sorted)-1]), 1)
}

// The lab's cluster and namespace.
const (
	cluster   = "hb"
	namespace = "bench"
	client    = "client"
	echoPort  = 80
)

// labName is the name of a case's lab: unique per process, at most 16
// characters.
func labName(nodes int) string { return "hb-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(nodes) }

func nodeName(i int) string { return "n" + strconv.Itoa(i) }

// serviceIP is the ClusterIP of the service of node i (1-based).
func serviceIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 96, 0, byte(10 + i)}) }

// topology is the lab of a case: nodes n1..nN, each with a web pod that
// is the one backend of its service web-<node>, a service web over all of
// them, and the client on n1.
func topology(name string, nodes int) *lab.Topology {
	c := lab.Cluster{
		Name: cluster, ID: 1, PodCIDR: "10.244.0.0/16",
		Namespaces: []lab.Namespace{{Name: namespace}},
		Services: []lab.ServiceSpec{{
			Name: "web", Namespace: namespace, ClusterIP: "10.96.0.10",
			Selector: map[string]string{"app": "web"}, Ports: []lab.ServicePort{{Port: echoPort}},
		}},
	}
	for i := 1; i <= nodes; i++ {
		n := nodeName(i)
		spec := lab.NodeSpec{Name: n, Pods: []lab.PodSpec{{
			Name: "web-" + n, Namespace: namespace, Labels: map[string]string{"app": "web", "node": n},
			Ports: []lab.PortSpec{{Name: "http", Port: echoPort}},
		}}}
		if i == 1 {
			spec.Pods = append(spec.Pods, lab.PodSpec{Name: client, Namespace: namespace, Labels: map[string]string{"app": "client"}})
		}
		c.Nodes = append(c.Nodes, spec)
		c.Services = append(c.Services, lab.ServiceSpec{
			Name: "web-" + n, Namespace: namespace, ClusterIP: serviceIP(i).String(),
			Selector: map[string]string{"app": "web", "node": n}, Ports: []lab.ServicePort{{Port: echoPort}},
		})
	}
	return &lab.Topology{Name: name, Clusters: []lab.Cluster{c}}
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

func round(v float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(v*p) / p
}

// serviceTarget is the frontend of the service of node i (1-based).
func serviceTarget(i int) netip.AddrPort { return netip.AddrPortFrom(serviceIP(i), echoPort) }
