package cli

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/labels"
)

func newBenchCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure meshplane against a real etcd",
	}
	cmd.AddCommand(newBenchIdentityCmd(o), newBenchIPAMCmd(o), newBenchGossipCmd(o))
	cmd.AddCommand(newBenchPropagationCmd(o), newBenchDatapathCmd(o), newBenchHealthCmd(o))
	cmd.AddCommand(newBenchControlPlaneCmd(o), newBenchCNICmd(o))
	return cmd
}

type benchConfig struct {
	agents, labelsets, batch int
	shared                   bool
}

// benchReport is the result of `bench identity`; the JSON names are the
// interface scripts read.
type benchReport struct {
	Agents          int     `json:"agents"`
	Labelsets       int     `json:"labelsets"` // per agent
	Shared          bool    `json:"shared"`
	Identities      int     `json:"identities"`  // distinct identities created
	Allocations     int     `json:"allocations"` // agents × labelsets
	AllocsPerS      float64 `json:"allocs_per_s"`
	P50MS           float64 `json:"p50_ms"`
	P99MS           float64 `json:"p99_ms"`
	Txns            int64   `json:"txns"`
	TxnsPerIdentity float64 `json:"txns_per_identity"`
	CeilingOpsPerS  float64 `json:"ceiling_ops_per_s"`
	Ratio           float64 `json:"ratio"`
	KnownLookupNS   float64 `json:"known_lookup_ns"`
}

func newBenchIdentityCmd(o *options) *cobra.Command {
	var (
		cfg    benchConfig
		format string
	)
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Benchmark identity allocation with many simulated agents",
		Long: `bench identity starts --agents simulated node agents in this process, each
with its own etcd client, session and allocator, in a fresh cluster named
bench-<random> (so runs never touch real identities). Each agent allocates
--labelsets label sets at once, as when pods start together on a node: with
--shared all agents allocate the same sets and race for them; otherwise each
agent's sets are its own.

It then checks that every agent got the same ID for the same labels, that no
two label sets share an ID and that etcd holds exactly one ID key per label
set, and fails if not.

For scale, it measures a ceiling in the same run: every agent's client doing
sequential single-key create-if-absent transactions, all agents at once,
--labelsets each, once before and once after the allocations (the reported
ceiling is the total over both). ratio = allocs_per_s / ceiling_ops_per_s; above 1 means batching beats one
transaction per label set.

Every key of the bench cluster is deleted at the end. Without
--etcd-endpoints the embedded etcd in --state-dir is used.`,
		Example: `  meshctl bench identity --agents 32 --labelsets 200 --state-dir "$(mktemp -d)"
  meshctl bench identity --agents 32 --labelsets 200 --shared -o json --etcd-endpoints http://127.0.0.1:2379`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if err := cfg.validate(); err != nil {
				return err
			}
			rep, err := o.benchIdentity(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return writeReport(o.stdout, format, rep)
		},
	}
	cmd.Flags().IntVar(&cfg.agents, "agents", 8, "simulated agents (nodes), each with its own etcd client")
	cmd.Flags().IntVar(&cfg.labelsets, "labelsets", 100, "label sets each agent allocates")
	cmd.Flags().BoolVar(&cfg.shared, "shared", false, "all agents allocate the same label sets")
	cmd.Flags().IntVar(&cfg.batch, "batch", 0, "most label sets per transaction; 0 is the allocator's default (etcd's --max-txn-ops bounds it)")
	addOutputFlag(cmd, &format)
	return cmd
}

func (c benchConfig) validate() error {
	switch {
	case c.agents < 1:
		return fmt.Errorf("--agents %d: use at least 1", c.agents)
	case c.labelsets < 1:
		return fmt.Errorf("--labelsets %d: use at least 1", c.labelsets)
	case c.batch < 0:
		return fmt.Errorf("--batch %d: use 0 (the default) or a positive number", c.batch)
	case c.distinct() > identity.LocalCount:
		return fmt.Errorf("%d distinct label sets do not fit in the %d identities of a cluster: lower --agents or --labelsets, or pass --shared",
			c.distinct(), identity.LocalCount)
	}
	return nil
}

func (c benchConfig) distinct() int {
	if c.shared {
		return c.labelsets
	}
	return c.agents * c.labelsets
}

// benchSets returns the label sets of agent i.
func (c benchConfig) sets(i int) []labels.Set {
	out := make([]labels.Set, c.labelsets)
	for j := range out {
		app := "bench-" + strconv.Itoa(j)
		if !c.shared {
			app = fmt.Sprintf("bench-%d-%d", i, j)
		}
		out[j] = labels.MustNewSet(
			labels.Label{Source: "k8s", Key: "app", Value: app},
			labels.Label{Source: "k8s", Key: "io.kubernetes.pod.namespace", Value: "ns-" + strconv.Itoa(j%10)},
		)
	}
	return out
}

func (o *options) benchIdentity(ctx context.Context, cfg benchConfig) (rep benchReport, err error) {
	cluster := "bench-" + randomSuffix(6)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		return rep, err
	}
	base, err := o.connect(ctx)
	if err != nil {
		return rep, err
	}
	// One etcd for all (with --etcd-embedded, the base client's).
	agentEtcd := o.etcdConfig()
	agentEtcd.Endpoints = base.Endpoints()
	fmt.Fprintf(o.stderr, "bench: %d agents × %d label sets (shared: %v), cluster %s on %s\n",
		cfg.agents, cfg.labelsets, cfg.shared, cluster, base.Config())

	agents := make([]*agent, cfg.agents)
	defer func() {
		// Stop the agents first (their leases go, and their references with
		// them), then remove everything else the run wrote.
		cerr := stopAgents(agents)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, derr := base.DeletePrefix(dctx, keys.Prefix()); derr != nil {
			cerr = errors.Join(cerr, fmt.Errorf("clean up bench keys (delete them by hand): %w", derr))
		}
		cerr = errors.Join(cerr, base.Close())
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench cleanup: %w", cerr))
		}
	}()
	if err := startBenchAgents(ctx, agents, agentEtcd, cluster, o.clusterID, cfg.batch); err != nil {
		return rep, err
	}

	sets := make([][]labels.Set, cfg.agents)
	for i := range sets {
		sets[i] = cfg.sets(i)
	}
	clients := make([]*kvstore.Client, len(agents))
	for i, ag := range agents {
		clients[i] = ag.client
	}
	before, err := benchCeiling(ctx, clients, keys.Prefix()+"bench-ceiling/before/", cfg.labelsets)
	if err != nil {
		return rep, err
	}
	ids, lat, wall, err := allocateAll(ctx, agents, sets)
	if err != nil {
		return rep, err
	}
	distinct, err := verifyBench(ctx, base, keys, agents, sets, ids)
	if err != nil {
		return rep, err
	}
	var created, joined, collisions int64
	for _, ag := range agents {
		st := ag.alloc.Stats()
		rep.Txns += st.Txns
		created, joined, collisions = created+st.Created, joined+st.Joined, collisions+st.Collisions
	}
	fmt.Fprintf(o.stderr, "bench: allocation took %s: %d transactions, %d identities created, %d joined, %d candidate collisions\n",
		wall.Round(time.Millisecond), rep.Txns, created, joined, collisions)
	known, err := knownLookup(ctx, agents[0], sets[0][0])
	if err != nil {
		return rep, err
	}
	after, err := benchCeiling(ctx, clients, keys.Prefix()+"bench-ceiling/after/", cfg.labelsets)
	if err != nil {
		return rep, err
	}
	// The ceiling is measured before and after the allocations, with the
	// same number of operations each time, and averaged: one short run is
	// at the mercy of etcd's backend commits and Go's GC cycles.
	ceiling := 2 / (1/before + 1/after)

	n := cfg.agents * cfg.labelsets
	slices.Sort(lat)
	rep.Agents, rep.Labelsets, rep.Shared = cfg.agents, cfg.labelsets, cfg.shared
	rep.Identities, rep.Allocations = distinct, n
	rep.AllocsPerS = round(float64(n)/wall.Seconds(), 1)
	rep.P50MS = round(ms(percentile(lat, 50)), 3)
	rep.P99MS = round(ms(percentile(lat, 99)), 3)
	rep.TxnsPerIdentity = round(float64(rep.Txns)/float64(distinct), 4)
	rep.CeilingOpsPerS = round(ceiling, 1)
	rep.Ratio = round(float64(n)/wall.Seconds()/ceiling, 3)
	rep.KnownLookupNS = round(float64(known.Nanoseconds()), 1)
	return rep, nil
}

// startBenchAgents starts the agents bench-node-0... concurrently, each on
// a client of its own, and waits until every identity cache is synced so
// that the timed part measures allocation only.
func startBenchAgents(ctx context.Context, agents []*agent, etcd kvstore.Config, cluster string, clusterID, batch int) error {
	errs := make([]error, len(agents))
	var wg sync.WaitGroup
	for i := range agents {
		wg.Go(func() {
			client, err := kvstore.New(ctx, etcd)
			if err != nil {
				errs[i] = err
				return
			}
			ag, err := startAgent(ctx, client, true, agentConfig{
				cluster: cluster, clusterID: clusterID, node: "bench-node-" + strconv.Itoa(i), maxBatch: batch,
			})
			if err != nil {
				errs[i] = err
				return
			}
			agents[i] = ag
			errs[i] = ag.alloc.WaitSynced(ctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// maxInFlight bounds the concurrent allocations of one agent, like the pods
// a node starts at once.
const maxInFlight = 256

// allocateAll has every agent allocate its sets, each agent's concurrently,
// all agents at once. It returns the IDs per agent and set, every
// allocation's latency, and the time from start to the last completion.
func allocateAll(ctx context.Context, agents []*agent, sets [][]labels.Set) ([][]identity.ID, []time.Duration, time.Duration, error) {
	ids := make([][]identity.ID, len(agents))
	lats := make([][]time.Duration, len(agents))
	ends := make([]time.Time, len(agents))
	errs := make([]error, len(agents))
	var wg sync.WaitGroup
	start := time.Now()
	for i, ag := range agents {
		ids[i] = make([]identity.ID, len(sets[i]))
		lats[i] = make([]time.Duration, len(sets[i]))
		wg.Go(func() {
			var (
				next    atomic.Int64
				pool    sync.WaitGroup
				errOnce sync.Once
			)
			for range min(len(sets[i]), maxInFlight) {
				pool.Go(func() {
					for j := int(next.Add(1) - 1); j < len(sets[i]); j = int(next.Add(1) - 1) {
						t0 := time.Now()
						id, err := ag.alloc.Allocate(ctx, sets[i][j])
						lats[i][j] = time.Since(t0)
						ids[i][j] = id
						if err != nil {
							errOnce.Do(func() { errs[i] = fmt.Errorf("%s: %w", ag.node, err) })
						}
					}
				})
			}
			pool.Wait()
			ends[i] = time.Now()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, 0, err
	}
	last := start
	var all []time.Duration
	for i := range agents {
		if ends[i].After(last) {
			last = ends[i]
		}
		all = append(all, lats[i]...)
	}
	return ids, all, last.Sub(start), nil
}

// verifyBench checks the invariants of allocation: one ID per label set
// across all agents, one label set per ID, and exactly those ID keys in
// etcd. It returns the number of distinct identities.
func verifyBench(ctx context.Context, client *kvstore.Client, keys kvstore.Keys, agents []*agent, sets [][]labels.Set, ids [][]identity.ID) (int, error) {
	type holder struct {
		id   identity.ID
		node string
	}
	bySet := make(map[string]holder)
	byID := make(map[identity.ID]string)
	for i, ag := range agents {
		for j, set := range sets[i] {
			s, id := set.String(), ids[i][j]
			if h, ok := bySet[s]; ok && h.id != id {
				return 0, fmt.Errorf("bench failed: agents disagree on %s: %s got %d, %s got %d", s, h.node, h.id, ag.node, id)
			}
			if other, ok := byID[id]; ok && other != s {
				return 0, fmt.Errorf("bench failed: ID %d was given to two label sets: %s and %s", id, other, s)
			}
			bySet[s], byID[id] = holder{id, ag.node}, s
		}
	}
	kvs, _, err := client.List(ctx, keys.IdentityIDPrefix())
	if err != nil {
		return 0, fmt.Errorf("bench: read back identities: %w", err)
	}
	if len(kvs) != len(bySet) {
		return 0, fmt.Errorf("bench failed: etcd holds %d identity keys for %d distinct label sets", len(kvs), len(bySet))
	}
	for _, kv := range kvs {
		key := strings.TrimPrefix(kv.Key, keys.IdentityIDPrefix())
		set, err := allocator.DecodeIdentity(key, kv.Value)
		if err != nil {
			return 0, fmt.Errorf("bench failed: %w", err)
		}
		id, _ := identity.Parse(key)
		if byID[id] != set.String() {
			return 0, fmt.Errorf("bench failed: etcd maps ID %d to %s, the agents to %q", id, set, byID[id])
		}
	}
	return len(bySet), nil
}

// knownLookup is the mean time of Allocate for a set the agent holds: the
// path a pod of an already-running workload takes.
func knownLookup(ctx context.Context, ag *agent, set labels.Set) (time.Duration, error) {
	const calls = 100_000
	start := time.Now()
	for range calls {
		if _, err := ag.alloc.Allocate(ctx, set); err != nil {
			return 0, fmt.Errorf("bench: allocate a held label set: %w", err)
		}
	}
	return time.Since(start) / calls, nil
}

// benchCeiling has every client create perClient fresh keys under prefix,
// one create-if-absent transaction at a time, all clients at once, and
// returns the transactions per second.
func benchCeiling(ctx context.Context, clients []*kvstore.Client, prefix string, perClient int) (float64, error) {
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range clients {
		wg.Go(func() {
			for j := range perClient {
				key := prefix + strconv.Itoa(i) + "/" + strconv.Itoa(j)
				if _, err := c.Create(ctx, key, []byte("x")); err != nil {
					errs[i] = fmt.Errorf("bench ceiling: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(len(clients)*perClient) / wall.Seconds(), nil
}

// percentile returns the nearest-rank p-th percentile of sorted d.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 × n)
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round(v float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(v*p) / p
}

// randomSuffix returns n random characters of [a-z0-9], for names that
// must not collide between runs.
func randomSuffix(n int) string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = chars[rand.IntN(len(chars))]
	}
	return string(b)
}
