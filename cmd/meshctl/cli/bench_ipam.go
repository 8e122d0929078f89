package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
	"github.com/meshplane/meshplane/node"
)

type benchIPAMConfig struct {
	nodes, pods, clients int
	dual                 bool
}

// benchIPAMReport is the result of `bench ipam`; the JSON names are the
// interface scripts read.
type benchIPAMReport struct {
	Nodes          int     `json:"nodes"`
	Pods           int     `json:"pods"`
	DualStack      bool    `json:"dual_stack"`
	NodeCIDRs      int     `json:"node_cidrs"`
	ClaimsS        float64 `json:"claims_s"`
	NodeClaimsPerS float64 `json:"node_claims_per_s"`
	ClaimP50MS     float64 `json:"claim_p50_ms"`
	ClaimP99MS     float64 `json:"claim_p99_ms"`
	PodIPs         int     `json:"pod_ips"`
	PodIPsPerS     float64 `json:"pod_ips_per_s"`
	PodIPP50MS     float64 `json:"pod_ip_p50_ms"`
	PodIPP99MS     float64 `json:"pod_ip_p99_ms"`
	CeilingOpsPerS float64 `json:"ceiling_ops_per_s"`
}

func newBenchIPAMCmd(o *options) *cobra.Command {
	var (
		cfg    benchIPAMConfig
		format string
	)
	cmd := &cobra.Command{
		Use:   "ipam",
		Short: "Measure node CIDR claims and pod IP allocation",
		Long: `bench ipam creates a pool (10.0.0.0/8 with /24 per node, and fd00:6d73::/48
with /112 with --dual-stack) in a fresh cluster named bench-<random>. N
simulated nodes, spread over --clients etcd clients and sessions, claim their
CIDRs all at once; then each node allocates --pods pod IPs from its CIDRs with
the node-local allocator (a journal per node in a temporary directory,
crash-safe as the agent's), several nodes at a time.

It checks that no CIDR was claimed twice (and etcd holds exactly one claim
per node CIDR) and that no node handed out an IP twice or outside its CIDRs,
and fails if not. For scale it measures a ceiling in the same run: the
clients doing sequential single-key create-if-absent transactions.

Every key of the bench cluster and the temporary directory are removed at
the end.`,
		Example: `  meshctl bench ipam --nodes 5000 --pods 100 --state-dir "$(mktemp -d)" -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if cfg.nodes < 1 || cfg.nodes > 65536 || cfg.pods < 0 || cfg.pods > 250 || cfg.clients < 1 {
				return fmt.Errorf("bench ipam: use 1-65536 --nodes, 0-250 --pods and at least one --clients")
			}
			rep, err := o.benchIPAM(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return writeReport(o.stdout, format, rep)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&cfg.nodes, "nodes", 1000, "simulated nodes")
	fs.IntVar(&cfg.pods, "pods", 100, "pod IPs each node allocates")
	fs.IntVar(&cfg.clients, "clients", 32, "etcd clients (each with a session) the nodes share")
	fs.BoolVar(&cfg.dual, "dual-stack", false, "claim IPv6 CIDRs and allocate IPv6 pod IPs too")
	addOutputFlag(cmd, &format)
	return cmd
}

func (o *options) benchIPAM(ctx context.Context, cfg benchIPAMConfig) (rep benchIPAMReport, err error) {
	cluster := "bench-" + randomSuffix(6)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		return rep, err
	}
	base, err := o.connect(ctx)
	if err != nil {
		return rep, err
	}
	dir, err := os.MkdirTemp("", "meshctl-bench-ipam-")
	if err != nil {
		return rep, fmt.Errorf("bench ipam: %w", err)
	}
	var (
		clients  []*kvstore.Client
		sessions []*kvstore.Session
	)
	defer func() {
		var cerr error
		for _, s := range sessions {
			cerr = errors.Join(cerr, s.Close())
		}
		for _, c := range clients {
			cerr = errors.Join(cerr, c.Close())
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, derr := base.DeletePrefix(dctx, keys.Prefix()); derr != nil {
			cerr = errors.Join(cerr, fmt.Errorf("clean up bench keys (delete them by hand): %w", derr))
		}
		cerr = errors.Join(cerr, base.Close(), os.RemoveAll(dir))
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench cleanup: %w", cerr))
		}
	}()
	pool := ipam.Pool{Name: "bench", IPv4: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, IPv4MaskSize: 24}
	fams := []ipam.Family{ipam.IPv4}
	if cfg.dual {
		pool.IPv6, pool.IPv6MaskSize = []netip.Prefix{netip.MustParsePrefix("fd00:6d73::/48")}, 112
		fams = append(fams, ipam.IPv6)
	}
	pools, err := nodecidr.NewPools(base, cluster)
	if err != nil {
		return rep, err
	}
	if err := pools.Add(ctx, pool); err != nil {
		return rep, err
	}
	etcd := o.etcdConfig()
	etcd.Endpoints = base.Endpoints()
	k := min(cfg.clients, cfg.nodes)
	for range k {
		c, err := kvstore.New(ctx, etcd)
		if err != nil {
			return rep, err
		}
		clients = append(clients, c)
		s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{})
		if err != nil {
			return rep, err
		}
		sessions = append(sessions, s)
	}
	fmt.Fprintf(o.stderr, "bench: %d nodes over %d clients, %d pod IPs each, cluster %s on %s\n",
		cfg.nodes, k, cfg.pods, cluster, base.Config())

	// Phase 1: every node claims at once.
	cidrs := make([][]netip.Prefix, cfg.nodes)
	claimers := make([]*nodecidr.Claimer, cfg.nodes)
	lat := make([]time.Duration, cfg.nodes)
	errs := make([]error, cfg.nodes)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range cfg.nodes {
		wg.Go(func() {
			t0 := time.Now()
			cl, err := nodecidr.NewClaimer(clients[i%k], sessions[i%k], nodecidr.Config{Cluster: cluster, Node: benchNode(i)})
			if err == nil {
				cidrs[i], err = cl.Ensure(ctx, fams...)
			}
			claimers[i] = cl
			lat[i], errs[i] = time.Since(t0), err
		})
	}
	wg.Wait()
	claimWall := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("bench ipam: claims: %w", err)
	}
	n, err := verifyClaims(ctx, base, cluster, cidrs, len(fams))
	if err != nil {
		return rep, err
	}

	// Phase 2: pod IPs, a few nodes at a time (each node's allocator is
	// local: in a real cluster they run in parallel on separate machines).
	podLat, podWall, usage, err := allocatePodIPs(dir, cidrs, cfg.pods, fams)
	if err != nil {
		return rep, err
	}
	// Not timed: the nodes publish their usage, as agents do, for
	// `meshctl ipam nodes`.
	if err := publishUsage(ctx, claimers, usage); err != nil {
		return rep, err
	}

	ceiling, err := benchCeiling(ctx, clients, keys.Prefix()+"bench-ceiling/", max(1, cfg.nodes/k))
	if err != nil {
		return rep, err
	}
	slices.Sort(lat)
	slices.Sort(podLat)
	rep = benchIPAMReport{
		Nodes: cfg.nodes, Pods: cfg.pods, DualStack: cfg.dual, NodeCIDRs: n,
		ClaimsS:        round(claimWall.Seconds(), 3),
		NodeClaimsPerS: round(float64(cfg.nodes)/claimWall.Seconds(), 1),
		ClaimP50MS:     round(ms(percentile(lat, 50)), 3),
		ClaimP99MS:     round(ms(percentile(lat, 99)), 3),
		PodIPs:         len(podLat),
		CeilingOpsPerS: round(ceiling, 1),
	}
	if len(podLat) > 0 {
		rep.PodIPsPerS = round(float64(len(podLat))/podWall.Seconds(), 1)
		rep.PodIPP50MS = round(ms(percentile(podLat, 50)), 4)
		rep.PodIPP99MS = round(ms(percentile(podLat, 99)), 4)
	}
	return rep, nil
}

func benchNode(i int) string { return "bench-node-" + strconv.Itoa(i) }

// verifyClaims checks that no CIDR went to two nodes, that each node got one
// per family, and that etcd holds exactly those claims. It returns the
// number of node CIDRs.
func verifyClaims(ctx context.Context, c *kvstore.Client, cluster string, cidrs [][]netip.Prefix, perNode int) (int, error) {
	owner := make(map[netip.Prefix]int)
	for i, cs := range cidrs {
		if len(cs) != perNode {
			return 0, fmt.Errorf("bench ipam: node %d got %d CIDRs, want %d", i, len(cs), perNode)
		}
		for _, p := range cs {
			if j, dup := owner[p]; dup {
				return 0, fmt.Errorf("bench ipam: CIDR %s given to nodes %d and %d", p, j, i)
			}
			owner[p] = i
		}
	}
	_, _, nodes, _, err := nodecidr.Status(ctx, c, cluster)
	if err != nil {
		return 0, err
	}
	inEtcd := 0
	for _, n := range nodes {
		inEtcd += len(n.CIDRs)
	}
	if inEtcd != len(owner) {
		return 0, fmt.Errorf("bench ipam: etcd holds %d node CIDRs, the nodes %d", inEtcd, len(owner))
	}
	return len(owner), nil
}

// allocatePodIPs has every node allocate pods IPs (per family) from its
// CIDRs with its own journal, GOMAXPROCS nodes at a time, and checks that
// no node hands out an address twice or outside its CIDRs.
func allocatePodIPs(dir string, cidrs [][]netip.Prefix, pods int, fams []ipam.Family) ([]time.Duration, time.Duration, [][]node.CIDRUsage, error) {
	var (
		mu    sync.Mutex
		lat   = make([]time.Duration, 0, len(cidrs)*pods*len(fams))
		errs  = make([]error, len(cidrs))
		usage = make([][]node.CIDRUsage, len(cidrs))
		next  = make(chan int)
		wg    sync.WaitGroup
	)
	start := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			mine := make([]time.Duration, 0, pods*len(fams))
			for i := range next {
				mine = mine[:0]
				usage[i], errs[i] = allocateOnNode(filepath.Join(dir, benchNode(i)), cidrs[i], pods, fams, &mine)
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}
		})
	}
	for i := range cidrs {
		next <- i
	}
	close(next)
	wg.Wait()
	return lat, time.Since(start), usage, errors.Join(errs...)
}

// publishUsage writes every node's usage into its node record, 32 at a time.
func publishUsage(ctx context.Context, claimers []*nodecidr.Claimer, usage [][]node.CIDRUsage) error {
	errs := make([]error, len(claimers))
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i, cl := range claimers {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = cl.Publish(ctx, usage[i])
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func allocateOnNode(dir string, cidrs []netip.Prefix, pods int, fams []ipam.Family, lat *[]time.Duration) (usage []node.CIDRUsage, err error) {
	a, err := podip.Open(podip.Config{Dir: dir}, cidrs)
	if err != nil {
		return nil, fmt.Errorf("bench ipam: %w", err)
	}
	defer func() {
		for _, c := range a.Stats().CIDRs {
			usage = append(usage, node.CIDRUsage{CIDR: c.CIDR, Used: c.Used, Free: c.Free})
		}
		err = errors.Join(err, a.Close())
	}()
	seen := make(map[netip.Addr]bool, pods*len(fams))
	for j := range pods {
		owner := "bench/pod-" + strconv.Itoa(j) + "/c0"
		for _, f := range fams {
			t0 := time.Now()
			ip, err := a.Allocate(owner, f)
			*lat = append(*lat, time.Since(t0))
			if err != nil {
				return nil, fmt.Errorf("bench ipam: %s: %w", dir, err)
			}
			if seen[ip] || !slices.ContainsFunc(cidrs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
				return nil, fmt.Errorf("bench ipam: %s handed out %s twice or outside %v", dir, ip, cidrs)
			}
			seen[ip] = true
		}
	}
	return nil, nil
}
