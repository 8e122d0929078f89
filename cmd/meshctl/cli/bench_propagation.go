package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/nodeagent"
)

type benchPropConfig struct {
	agents, entries, writes int
}

// benchPropReport is the result of `bench propagation`; the JSON names are
// the interface scripts read.
type benchPropReport struct {
	Agents               int     `json:"agents"`
	Entries              int     `json:"entries"`
	Writes               int     `json:"writes"`
	PropagationP50MS     float64 `json:"propagation_p50_ms"`
	PropagationP99MS     float64 `json:"propagation_p99_ms"`
	PropagationMaxMS     float64 `json:"propagation_max_ms"`
	InitialSyncS         float64 `json:"initial_sync_s"`
	AllAgentsSyncS       float64 `json:"all_agents_sync_s"`
	RestartResyncS       float64 `json:"restart_resync_s"`
	MissingDuringRestart int64   `json:"missing_during_restart"`
	RestartLookups       int64   `json:"restart_lookups"`
	RestartWrites        int64   `json:"restart_writes"`
	RSSBytes             int64   `json:"rss_bytes"`
}

func newBenchPropagationCmd(o *options) *cobra.Command {
	var (
		cfg    benchPropConfig
		format string
	)
	cmd := &cobra.Command{
		Use:   "propagation",
		Short: "Measure how fast etcd state reaches every agent's eBPF maps",
		Long: `bench propagation runs real agents (in this process, each with its own pinned
maps under /sys/fs/bpf/meshplane/<node>, state directory, API socket and
gossip port) against etcd, in a fresh cluster named bench-<random>. It needs
root (CAP_BPF).

1. It writes --entries ipcache entries to etcd, starts one agent and times it
   from start until every entry is in its ipcache map (initial_sync_s); the
   memory that agent added to this process is rss_bytes.
2. It starts the other agents (all_agents_sync_s), then writes --writes new
   entries one at a time and times each from the etcd write until the entry
   is in all agents' maps, read from the pinned maps as the datapath sees
   them (propagation_p50_ms, propagation_p99_ms).
3. It restarts the first agent while a reader looks up every expected entry
   in its pinned map, over and over (missing_during_restart counts lookups
   that missed; restart_lookups counts them all), and times the new agent
   from start until its maps are synced again (restart_resync_s).
   restart_writes is what the new agent wrote to its maps (0 when nothing
   changed).

Every key, pin and temporary file is removed at the end.`,
		Example: `  meshctl bench propagation --agents 50 --entries 1000 --state-dir "$(mktemp -d)" -o json
  meshctl bench propagation --agents 1 --entries 100000 --state-dir "$(mktemp -d)" -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if cfg.agents < 1 || cfg.agents > 200 || cfg.entries < 0 || cfg.entries > 1_000_000 || cfg.writes < 1 || cfg.writes > 10000 {
				return fmt.Errorf("bench propagation: use 1-200 --agents, 0-1000000 --entries and 1-10000 --writes")
			}
			rep, err := o.benchPropagation(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return writeReport(o.stdout, format, rep)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&cfg.agents, "agents", 10, "agents to run")
	fs.IntVar(&cfg.entries, "entries", 10000, "ipcache entries in etcd before the agents start")
	fs.IntVar(&cfg.writes, "writes", 200, "entries written one at a time to measure propagation")
	addOutputFlag(cmd, &format)
	return cmd
}

// benchAgent is one in-process agent of the bench.
type benchAgent struct {
	cfg    nodeagent.Config
	a      *nodeagent.Agent
	cancel context.CancelFunc
	done   chan error
}

func startBenchAgent(cfg nodeagent.Config) (*benchAgent, error) {
	a, err := nodeagent.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ba := &benchAgent{cfg: cfg, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ba.done <- a.Run(ctx) }()
	return ba, nil
}

func (ba *benchAgent) stop() error {
	if ba.cancel == nil {
		return nil
	}
	ba.cancel()
	ba.cancel = nil
	select {
	case err := <-ba.done:
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("agent %s did not stop within 30s", ba.cfg.Node)
	}
}

// waitSynced waits until the agent is ok and its ipcache holds at least
// want entries, and returns how long that took from since.
func (ba *benchAgent) waitSynced(ctx context.Context, want int, since time.Time) (time.Duration, error) {
	for {
		st := ba.a.Status()
		if st.State == nodeagent.StateOK {
			for _, m := range st.Maps {
				if m.Name == "ipcache" && m.Synced && m.Pending == 0 && m.Installed >= want {
					return time.Since(since), nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("agent %s not synced: %s %v: %w", ba.cfg.Node, st.State, st.Reasons, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func benchIP(base [4]byte, i int) netip.Addr {
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (o *options) benchPropagation(ctx context.Context, cfg benchPropConfig) (rep benchPropReport, err error) {
	rep.Agents, rep.Entries, rep.Writes = cfg.agents, cfg.entries, cfg.writes
	if _, err := bpf.MountFS(bpf.DefaultDir); err != nil {
		return rep, fmt.Errorf("bench propagation needs eBPF maps (run as root): %w", err)
	}
	if err := bpf.CheckSupport(bpf.DefaultDir); err != nil {
		return rep, fmt.Errorf("bench propagation needs eBPF maps (run as root): %w", err)
	}
	suffix := randomSuffix(6)
	cluster := "bench-" + suffix
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		return rep, err
	}
	base, err := o.connect(ctx)
	if err != nil {
		return rep, err
	}
	dir, err := os.MkdirTemp("", "meshctl-bench-prop-")
	if err != nil {
		return rep, fmt.Errorf("bench propagation: %w", err)
	}
	gossipKey := make([]byte, 32)
	_, _ = rand.Read(gossipKey)
	etcdCfg := o.etcdConfig()
	etcdCfg.Endpoints = base.Endpoints()
	agentCfg := func(i int) nodeagent.Config {
		name := fmt.Sprintf("bench-%s-%d", suffix, i)
		return nodeagent.Config{
			Node: name, Cluster: cluster, ClusterID: o.clusterID, Etcd: etcdCfg,
			StateDir:   filepath.Join(dir, name),
			NodeIPs:    []netip.Addr{benchIP([4]byte{127, 1, 0, 1}, i)},
			GossipAddr: netip.MustParseAddr("127.0.0.1"), GossipPort: -1, GossipKeys: [][]byte{gossipKey},
			APISocket: filepath.Join(dir, strconv.Itoa(i)+".sock"), APISocketGroup: -1,
			// In-process agents share this network namespace: no routes.
			RoutingMode: nodeagent.RoutingNone,
		}
	}
	var agents []*benchAgent
	defer func() {
		var cerr error
		for _, ba := range agents {
			cerr = errors.Join(cerr, ba.stop(), bpf.RemovePins(bpf.Config{Node: ba.cfg.Node}))
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
		defer cancel()
		if _, derr := base.DeletePrefix(dctx, keys.Prefix()); derr != nil {
			cerr = errors.Join(cerr, fmt.Errorf("clean up bench keys (delete them by hand): %w", derr))
		}
		cerr = errors.Join(cerr, base.Close(), os.RemoveAll(dir))
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench cleanup: %w", cerr))
		}
	}()

	// 1. Preload, then one agent's initial sync and memory.
	fmt.Fprintf(o.stderr, "writing %d ipcache entries to etcd...\n", cfg.entries)
	var kvs []kvstore.KeyValue
	for i := range cfg.entries {
		e := ipcache.Entry{IP: benchIP([4]byte{10, 224, 0, 0}, i), Identity: identity.ID(70000 + i%4096), Node: "bench-remote"}
		kvs = append(kvs, kvstore.KeyValue{Key: keys.Endpoint(ipcache.KeyOf(e.IP)), Value: e.Encode()})
	}
	if err := base.PutMany(ctx, kvs); err != nil {
		return rep, err
	}
	kvs = nil
	runtime.GC()
	rssBefore := selfRSS()
	// The agent's own node adds its address and pod CIDR to the ipcache.
	want := cfg.entries + 2
	fmt.Fprintf(o.stderr, "starting agent 0...\n")
	start := time.Now()
	first, err := startBenchAgent(agentCfg(0))
	if err != nil {
		return rep, err
	}
	agents = append(agents, first)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	took, err := first.waitSynced(sctx, want, start)
	if err != nil {
		return rep, err
	}
	rep.InitialSyncS = round(took.Seconds(), 3)
	runtime.GC()
	rep.RSSBytes = selfRSS() - rssBefore

	// 2. The other agents, then propagation to all of them.
	fmt.Fprintf(o.stderr, "starting %d more agents...\n", cfg.agents-1)
	start = time.Now()
	for i := 1; i < cfg.agents; i++ {
		ba, err := startBenchAgent(agentCfg(i))
		if err != nil {
			return rep, err
		}
		agents = append(agents, ba)
	}
	// Each agent also sees every node's address and CIDR.
	want = cfg.entries + 2*cfg.agents
	for _, ba := range agents {
		if _, err := ba.waitSynced(sctx, want, start); err != nil {
			return rep, err
		}
	}
	rep.AllAgentsSyncS = round(time.Since(start).Seconds(), 3)
	maps := make([]*bpf.Map[bpf.IPCacheKey, bpf.IPCacheValue], len(agents))
	for i, ba := range agents {
		m, err := bpf.OpenPinned[bpf.IPCacheKey, bpf.IPCacheValue](filepath.Join(bpf.Config{Node: ba.cfg.Node}.PinDir(), bpf.IPCacheMapName))
		if err != nil {
			return rep, err
		}
		defer func() { _ = m.Close() }()
		maps[i] = m
	}
	fmt.Fprintf(o.stderr, "measuring propagation of %d writes to %d agents...\n", cfg.writes, cfg.agents)
	lat := make([]time.Duration, 0, cfg.writes)
	var written []netip.Addr
	for w := range cfg.writes {
		ip := benchIP([4]byte{10, 250, 0, 0}, w)
		e := ipcache.Entry{IP: ip, Identity: 70000, Node: "bench-remote"}
		key := bpf.IPCacheKeyFor(netip.PrefixFrom(ip, 32))
		t0 := time.Now()
		if err := base.Put(ctx, keys.Endpoint(ipcache.KeyOf(ip)), e.Encode()); err != nil {
			return rep, err
		}
		pending := slices.Clone(maps)
		deadline := t0.Add(10 * time.Second)
		for len(pending) > 0 {
			pending = slices.DeleteFunc(pending, func(m *bpf.Map[bpf.IPCacheKey, bpf.IPCacheValue]) bool {
				_, ok, err := m.Lookup(key)
				return err == nil && ok
			})
			if len(pending) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return rep, fmt.Errorf("bench propagation: write %d reached only %d of %d agents in 10s", w, len(maps)-len(pending), len(maps))
			}
			time.Sleep(200 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
		written = append(written, ip)
		time.Sleep(5 * time.Millisecond)
	}
	slices.Sort(lat)
	rep.PropagationP50MS = round(ms(percentile(lat, 50)), 2)
	rep.PropagationP99MS = round(ms(percentile(lat, 99)), 2)
	rep.PropagationMaxMS = round(ms(lat[len(lat)-1]), 2)

	// 3. Restart the first agent under a reader of its pinned map.
	fmt.Fprintf(o.stderr, "restarting agent 0 under a reader...\n")
	expect := make([]bpf.IPCacheKey, 0, cfg.entries+len(written))
	for i := range cfg.entries {
		expect = append(expect, bpf.IPCacheKeyFor(netip.PrefixFrom(benchIP([4]byte{10, 224, 0, 0}, i), 32)))
	}
	for _, ip := range written {
		expect = append(expect, bpf.IPCacheKeyFor(netip.PrefixFrom(ip, 32)))
	}
	var missing, lookups atomic.Int64
	stopRead := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m := maps[0]
		for {
			for i, k := range expect {
				if i%1024 == 0 {
					select {
					case <-stopRead:
						return
					default:
					}
				}
				_, ok, err := m.Lookup(k)
				lookups.Add(1)
				if err != nil || !ok {
					missing.Add(1)
				}
			}
		}
	}()
	if err := first.stop(); err != nil {
		close(stopRead)
		wg.Wait()
		return rep, err
	}
	start = time.Now()
	again, err := startBenchAgent(first.cfg)
	if err != nil {
		close(stopRead)
		wg.Wait()
		return rep, err
	}
	agents[0] = again
	took, err = again.waitSynced(sctx, want+len(written), start)
	close(stopRead)
	wg.Wait()
	if err != nil {
		return rep, err
	}
	rep.RestartResyncS = round(took.Seconds(), 3)
	rep.MissingDuringRestart, rep.RestartLookups = missing.Load(), lookups.Load()
	for _, m := range again.a.Status().Maps {
		rep.RestartWrites += m.Puts + m.Deletes
	}
	return rep, nil
}

// selfRSS is this process's resident set size in bytes (0 if unknown).
func selfRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}
