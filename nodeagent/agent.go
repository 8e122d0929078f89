package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// Agent is the node agent. New builds it from a Config; Run does the work
// until its context ends.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	keys  kvstore.Keys
	start time.Time

	maps    *bpf.Maps
	ipcT    *reconciler.Table[bpf.IPCacheKey, bpf.IPCacheValue]
	epT     *reconciler.Table[bpf.EndpointKey, bpf.EndpointValue]
	polT    *reconciler.Table[bpf.PolicyKey, bpf.PolicyValue]
	svcT    *reconciler.Table[bpf.ServiceKey, bpf.ServiceValue]
	beT     *reconciler.Table[bpf.BackendKey, bpf.BackendValue]
	cidrT   *reconciler.Table[bpf.IPCacheKey, bpf.CIDRValue]
	recs    []mapReconciler // set up by Run before it publishes started
	mirror  *mirror
	eps     *endpoints
	pol     *policyState
	dp      *datapath
	routing *routing // set by Run (setupRouting) before it publishes started
	flows   *flowHub
	met     *metrics

	// Set once, as Run gets that far; read by the API (nil before).
	client  atomic.Pointer[kvstore.Client]
	session atomic.Pointer[kvstore.Session]
	claimer atomic.Pointer[nodecidr.Claimer]
	ips     atomic.Pointer[podip.Allocator]
	ids     atomic.Pointer[allocator.Allocator]
	gossip  atomic.Pointer[health.Gossip]
	nodesC  atomic.Pointer[kvstore.Cache[node.Record]]
	epC     atomic.Pointer[kvstore.Cache[ipcache.Entry]]
	svcC    atomic.Pointer[kvstore.Cache[service.Service]]
	polC    atomic.Pointer[kvstore.Cache[*policy.Policy]]
	podC    atomic.Pointer[kvstore.Cache[pod.Pod]]
	nsC     atomic.Pointer[kvstore.Cache[pod.Namespace]]
	meta    atomic.Pointer[podMetadata]
	ready   atomic.Bool // caches delivered, tables marked ready
	// enforcedRev is the policy revision the node enforces (policyrev.go).
	enforcedRev atomic.Int64
	// started is set once Run has built the maps and reconcilers: Status
	// reads them only after.
	started atomic.Bool

	podIPs podIPState // what the pod IP reconcile found (reconcile_ips.go)

	mu      sync.Mutex // mu guards etcdErr and cidrs
	etcdErr error      // the last failed etcd probe; nil while etcd answers
	cidrs   []netip.Prefix

	// claimMu makes pods that find their family's CIDRs full (ADDs run in
	// parallel) claim one more CIDR between them, not one each.
	claimMu sync.Mutex
}

// mapReconciler is a reconciler with its map, for status and metrics.
type mapReconciler struct {
	name   string
	path   string
	max    int
	status func() reconciler.Status
	synced <-chan struct{}
	run    func(context.Context) error
}

// New validates cfg and returns an agent; it touches nothing yet.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	keys, err := kvstore.NewKeys(cfg.Cluster)
	if err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, log: cfg.Logger, keys: keys, start: time.Now()}, nil
}

// Run runs the agent until ctx ends. It returns nil after a clean
// shutdown, and an error when it cannot start (another agent holds the
// state directory: ErrStateDirInUse; bpffs missing, the maps incompatible,
// the API socket in use) or fails for good.
//
// On the way out it keeps everything the datapath needs: the pinned maps
// stay as they are, and the etcd lease is detached, not revoked, so the
// node record and the node's ipcache entries stay while the agent
// restarts.
func (a *Agent) Run(ctx context.Context) (err error) {
	// First of all: a second agent on this state directory must touch
	// nothing (lock.go). Released last, after shutdown.
	lock, err := lockStateDir(a.cfg.StateDir)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, lock.Close()) }()
	if err := a.setupBPFFS(); err != nil {
		return err
	}
	bcfg := a.cfg.BPF
	maps, err := bpf.OpenMaps(bcfg)
	if err != nil {
		return err
	}
	a.maps = maps
	defer func() { err = errors.Join(err, maps.Close()) }()
	a.dp = &datapath{log: a.log, attached: make(map[uint32]int), errs: make(map[uint32]error)}
	a.flows = newFlowHub()
	if a.cfg.Datapath == DatapathEBPF {
		dp, err := bpf.LoadDatapath(bcfg, maps)
		if err != nil {
			return fmt.Errorf("load the datapath: %w", err)
		}
		// Closing the programs' handles keeps them running: the links
		// are pinned.
		defer func() { err = errors.Join(err, dp.Close()) }()
		a.dp.dp = dp
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	rt, err := a.setupRouting()
	if err != nil {
		return err
	}
	defer rt.close()
	a.met = newMetrics(a)
	if err := a.buildMirror(); err != nil {
		return err
	}
	a.mirror.routesChanged = rt.pokeRoutes
	rt.routes = a.mirror.wantedRoutes
	a.started.Store(true)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for _, r := range a.recs {
		g.Go(func() error { return r.run(gctx) })
	}
	g.Go(func() error { return a.readFlows(gctx) })
	fail := func(err error) error {
		cancel()
		return errors.Join(err, g.Wait(), a.shutdown())
	}
	srv, err := a.serveAPI(gctx, g)
	if err != nil {
		return fail(err)
	}
	defer srv.stop()
	if a.cfg.MetricsAddr != "" {
		if err := a.met.serve(gctx, g, a.cfg.MetricsAddr); err != nil {
			return fail(err)
		}
	}
	g.Go(func() error { return a.runControl(gctx, g) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return errors.Join(err, a.shutdown())
}

// buildMirror creates the desired-state tables and their reconcilers, and
// seeds the mirror from what the pinned maps already hold.
func (a *Agent) buildMirror() error {
	a.ipcT = reconciler.NewTable[bpf.IPCacheKey, bpf.IPCacheValue]()
	a.epT = reconciler.NewTable[bpf.EndpointKey, bpf.EndpointValue]()
	a.polT = reconciler.NewTable[bpf.PolicyKey, bpf.PolicyValue]()
	a.svcT = reconciler.NewTable[bpf.ServiceKey, bpf.ServiceValue]()
	a.beT = reconciler.NewTable[bpf.BackendKey, bpf.BackendValue]()
	if err := addReconciler(a, "ipcache", a.ipcT, a.maps.IPCache); err != nil {
		return err
	}
	if err := addReconciler(a, "endpoints", a.epT, a.maps.Endpoints); err != nil {
		return err
	}
	if err := addReconciler(a, "policy", a.polT, a.maps.Policy); err != nil {
		return err
	}
	if err := addReconciler(a, "backends", a.beT, a.maps.Backends); err != nil {
		return err
	}
	if err := addReconciler(a, "services", a.svcT, a.maps.Services); err != nil {
		return err
	}
	a.mirror = newMirror(nodeRef{a.cfg.Cluster, a.cfg.Node}, a.ipcT, a.svcT, a.beT, uint32(a.maps.Backends.MaxEntries()), 65535)
	a.mirror.nodeChanged = make(chan struct{}, 1)
	svcs, err := readAll(a.maps.Services)
	if err != nil {
		return err
	}
	bes, err := readAll(a.maps.Backends)
	if err != nil {
		return err
	}
	a.mirror.seed(svcs, bes)
	a.pol = newPolicyState(a.cfg.Cluster, a.epT, a.polT, a.mirror.setCIDR)
	if err := a.buildCIDRMap(); err != nil {
		return err
	}
	pinnedEPs, err := readAll(a.maps.Endpoints)
	if err != nil {
		return err
	}
	a.eps = newEndpoints(filepath.Join(a.cfg.StateDir, "endpoints"), a.cfg.Cluster, a.cfg.LabelFilter, a)
	if err := a.eps.load(); err != nil {
		return err
	}
	// Until the policies are read, every endpoint keeps the enforcement
	// it has in the pinned map.
	for _, v := range pinnedEPs {
		a.pol.seedFlags(v.EndpointID, v.Flags)
	}
	a.dp.prune()
	// The endpoints map needs nothing from etcd: it is right as soon as
	// the state files are read.
	a.epT.MarkReady()
	return nil
}

func addReconciler[K, V comparable](a *Agent, name string, t *reconciler.Table[K, V], m *bpf.Map[K, V]) error {
	r, err := reconciler.New(t, m, reconciler.Config{
		Name: name, PruneInterval: a.cfg.PruneInterval, Observer: a.met.observer(name),
	})
	if err != nil {
		return err
	}
	a.recs = append(a.recs, mapReconciler{
		name: name, path: m.Path(), max: m.MaxEntries(),
		status: r.Status, synced: r.Synced(), run: r.Run,
	})
	return nil
}

func readAll[K, V comparable](m *bpf.Map[K, V]) (map[K]V, error) {
	out := make(map[K]V)
	err := m.Iterate(func(k K, v V) bool { out[k] = v; return true })
	if err != nil {
		return nil, fmt.Errorf("read pinned map %s: %w", m.Name(), err)
	}
	return out, nil
}

// runControl connects to etcd (retrying for as long as it takes), then
// starts everything that needs it.
func (a *Agent) runControl(ctx context.Context, g *errgroup.Group) error {
	client, err := a.connect(ctx)
	if err != nil {
		return err
	}
	a.client.Store(client)
	// Before the agent writes anything (its lease, node record, claims),
	// the etcd must be this cluster's.
	if err := a.ensureCluster(ctx, client); err != nil {
		return err
	}
	leaseFile := filepath.Join(a.cfg.StateDir, "lease")
	resume := readLease(leaseFile)
	session, err := kvstore.NewSession(ctx, client, kvstore.SessionConfig{
		TTL: a.cfg.LeaseTTL, Resume: resume, Guard: a.guardedPrefixes(), OnRepair: a.logRepair,
	})
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	a.session.Store(session)
	if err := writeLease(leaseFile, session.State().Lease); err != nil {
		a.log.Warn("cannot record the etcd lease; a restart will take a new one", "err", err)
	}

	gossip, err := a.startGossip()
	if err != nil {
		return err
	}
	a.gossip.Store(gossip)

	claimer, err := nodecidr.NewClaimer(client, session, nodecidr.Config{Cluster: a.cfg.Cluster, Node: a.cfg.Node})
	if err != nil {
		return err
	}
	claimer.SetNodeInfo(a.nodeInfo(gossip))
	cidrs, err := a.ensureCIDRs(ctx, claimer)
	if err != nil {
		return err
	}
	a.claimer.Store(claimer)
	ids, err := allocator.New(allocator.Config{
		Cluster: a.cfg.Cluster, ClusterID: identity.ClusterID(a.cfg.ClusterID), Node: a.cfg.Node, Filter: a.cfg.LabelFilter,
		OnInvalid: a.identityInvalid,
	}, client, session)
	if err != nil {
		return err
	}
	ids.Subscribe(identityHandler{a.pol})
	a.ids.Store(ids)
	g.Go(func() error { return ignoreCanceled(ids.Run(ctx)) })

	if err := a.startCaches(ctx, g); err != nil {
		return err
	}
	g.Go(func() error { a.joinLoop(ctx); return nil })
	g.Go(func() error { a.probeLoop(ctx); return nil })
	g.Go(func() error { a.publishUsageLoop(ctx); return nil })
	g.Go(func() error { a.policyRevisionLoop(ctx); return nil })
	// The API hands out pod IPs only once the allocator holds every IP the
	// state files and etcd give this node's pods.
	ips, err := a.openPodIPs(ctx, cidrs)
	if err != nil {
		return err
	}
	a.ips.Store(ips)
	// Only then are the pods' etcd entries written again: the reconcile
	// above reads them as this node's records as they were. Relabels
	// start after the restore, which re-takes the identities they swap.
	g.Go(func() error {
		a.restoreEndpoints(ctx)
		a.relabelLoop(ctx, a.meta.Load())
		return nil
	})

	// The tables fed from etcd may prune only once every cache has handed
	// its first list to the mirror: before that, an entry missing from
	// the table may just not be loaded yet.
	for _, ch := range []<-chan struct{}{a.nodesC.Load().Delivered(), a.epC.Load().Delivered(), a.svcC.Load().Delivered(),
		a.polC.Load().Delivered(), ids.Delivered()} {
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
	a.mirror.dropSeeds()
	a.ipcT.MarkReady()
	a.beT.MarkReady()
	a.svcT.MarkReady()
	a.pol.markSynced()
	a.polT.MarkReady()
	a.cidrT.MarkReady()
	a.ready.Store(true)
	// Routes follow the node records only once all are read: before,
	// a missing node may just not be loaded yet (the kernel keeps the
	// routes of the last run meanwhile).
	g.Go(func() error { a.routing.run(ctx, a.cfg.PruneInterval); return nil })
	a.log.Info("agent synced", "node", a.cfg.Node, "podCIDRs", cidrs, "took", time.Since(a.start))
	<-ctx.Done()
	return nil
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// connect opens the etcd client, retrying with backoff while etcd is
// unreachable; a misconfiguration (bad TLS files, wrong password) is
// retried too, since an operator may fix etcd's side, but logged as an
// error.
func (a *Agent) connect(ctx context.Context) (*kvstore.Client, error) {
	backoff := 200 * time.Millisecond
	for {
		c, err := kvstore.New(ctx, a.cfg.Etcd)
		if err == nil {
			a.setEtcdErr(nil)
			return c, nil
		}
		a.setEtcdErr(err)
		if errors.Is(err, kvstore.ErrConfig) {
			return nil, err
		}
		level := slog.LevelWarn
		if errors.Is(err, kvstore.ErrAuth) {
			level = slog.LevelError
		}
		a.log.Log(ctx, level, "cannot reach etcd; the datapath keeps its state, retrying", "err", err, "retry", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// ensureCluster checks etcd's cluster record against the agent's cluster
// name and ID, creating it if there is none (kvstore.EnsureCluster): an
// agent started before anything else of its cluster works on its own, as
// it creates the default pool. A record that disagrees or is corrupt ends
// the agent, which must not run with identities of the wrong cluster or
// write into another cluster's etcd; etcd trouble is retried.
func (a *Agent) ensureCluster(ctx context.Context, c *kvstore.Client) error {
	backoff := 200 * time.Millisecond
	for {
		rec, created, err := kvstore.EnsureCluster(ctx, c, a.keys, a.cfg.ClusterID)
		var mismatch *cluster.MismatchError
		switch {
		case err == nil:
			if created {
				a.log.Info("created the cluster record", "cluster", rec.Name, "clusterID", rec.ID)
			}
			a.setEtcdErr(nil)
			return nil
		case errors.As(err, &mismatch), errors.Is(err, cluster.ErrInvalid):
			a.setEtcdErr(err)
			return fmt.Errorf("refusing to start: %w", err)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		a.setEtcdErr(err)
		a.log.Warn("cannot read the cluster record; retrying", "err", err, "retry", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (a *Agent) setEtcdErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.etcdErr = err
}

// probeLoop asks etcd for the node's record every second: the watch and
// the lease hide an outage for a while, the status must not.
func (a *Agent) probeLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	client := a.client.Load()
	key := a.keys.Node(a.cfg.Node)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, _, err := client.Get(pctx, key)
		cancel()
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		was := a.etcdErr
		a.etcdErr = err
		a.mu.Unlock()
		switch {
		case err != nil && was == nil:
			a.log.Warn("etcd unreachable; the datapath keeps its last state", "err", err)
		case err == nil && was != nil:
			a.log.Info("etcd reachable again; resyncing")
		}
	}
}

func (a *Agent) nodeInfo(g *health.Gossip) node.Record {
	return node.Record{
		IPs: a.cfg.NodeIPs, GossipAddr: g.LocalAddr().String(), Labels: a.cfg.NodeLabels,
		Version: Version, ClusterID: a.cfg.ClusterID,
	}
}

// ensureCIDRs claims (or, after a restart, recovers) the node's pod CIDRs,
// retrying while the pools are exhausted or missing: an operator can add
// a pool, and the agent must not crash-loop meanwhile.
func (a *Agent) ensureCIDRs(ctx context.Context, c *nodecidr.Claimer) ([]netip.Prefix, error) {
	backoff := time.Second
	if !a.cfg.NoDefaultPool {
		if err := a.defaultPool(ctx); err != nil {
			a.log.Warn("cannot create the default IPAM pool", "err", err)
		}
	}
	for {
		cidrs, err := c.Ensure(ctx, a.cfg.Families...)
		if err == nil {
			a.mu.Lock()
			a.cidrs = cidrs
			a.mu.Unlock()
			return cidrs, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		a.setEtcdErr(err)
		a.log.Error("cannot get a pod CIDR; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// defaultPool creates the default pool in a cluster without pools. Agents
// that race all try; the pools' transaction lets one win.
func (a *Agent) defaultPool(ctx context.Context) error {
	pools, err := nodecidr.NewPools(a.client.Load(), a.cfg.Cluster)
	if err != nil {
		return err
	}
	have, err := pools.List(ctx)
	if err != nil || len(have) > 0 {
		return err
	}
	pool := ipam.DefaultPool(slices.Contains(a.cfg.Families, ipam.IPv6))
	if err := pools.Add(ctx, pool); err != nil {
		if have, lerr := pools.List(ctx); lerr == nil && len(have) > 0 {
			return nil // another agent won
		}
		return err
	}
	a.log.Info("created the default IPAM pool", "ipv4", pool.IPv4, "ipv6", pool.IPv6)
	return nil
}

func (a *Agent) startCaches(ctx context.Context, g *errgroup.Group) error {
	nodesC, err := newCache(a, cacheNodes, a.keys.NodesPrefix(), node.Decode)
	if err != nil {
		return err
	}
	// The mirror's handlers are told the cluster their prefixes belong
	// to: these are this agent's own; a remote cluster's watch would
	// subscribe handlers of its cluster (mirror.removeCluster drops them).
	nodesC.Subscribe(nodeHandler{a.mirror, a.cfg.Cluster})
	epC, err := newCache(a, cacheEndpoints, a.keys.EndpointsPrefix(), ipcache.Decode)
	if err != nil {
		return err
	}
	epC.Subscribe(endpointHandler{a.mirror, a.cfg.Cluster})
	svcC, err := newCache(a, cacheServices, a.keys.ServicesPrefix(), kvstore.ServiceCodec().Decode)
	if err != nil {
		return err
	}
	svcC.Subscribe(serviceHandler{a.mirror, a.cfg.Cluster})
	epC.Subscribe(namedPortHandler{a.pol})
	polC, err := newCache(a, cachePolicies, a.keys.PoliciesPrefix(), kvstore.PolicyCodec().Decode)
	if err != nil {
		return err
	}
	polC.Subscribe(policyHandler{a.pol})
	a.polC.Store(polC)
	// Only this node's pods: pods/<node>/ (docs/kvstore.md).
	podC, err := newCache(a, cachePods, a.keys.NodePodsPrefix(a.cfg.Node), pod.NodeDecoder(a.cfg.Node))
	if err != nil {
		return err
	}
	nsC, err := newCache(a, cacheNamespaces, a.keys.NamespacesPrefix(), pod.DecodeNamespace)
	if err != nil {
		return err
	}
	a.meta.Store(newPodMetadata(podC, nsC, a.cfg.PodMetadataWait))
	a.podC.Store(podC)
	a.nsC.Store(nsC)
	g.Go(func() error { return ignoreCanceled(podC.Run(ctx)) })
	g.Go(func() error { return ignoreCanceled(nsC.Run(ctx)) })
	g.Go(func() error { return ignoreCanceled(polC.Run(ctx)) })
	a.nodesC.Store(nodesC)
	a.epC.Store(epC)
	a.svcC.Store(svcC)
	g.Go(func() error { return ignoreCanceled(nodesC.Run(ctx)) })
	g.Go(func() error { return ignoreCanceled(epC.Run(ctx)) })
	g.Go(func() error { return ignoreCanceled(svcC.Run(ctx)) })
	return nil
}

// restoreEndpoints re-takes, after a restart, what the local endpoints
// hold in etcd (endpoints.restore): their identity references and ipcache
// entries.
func (a *Agent) restoreEndpoints(ctx context.Context) {
	for _, ep := range a.eps.list() {
		res, err := a.eps.restore(ctx, a, ep.owner())
		if err != nil {
			if ctx.Err() == nil {
				a.log.Error("cannot restore an endpoint's identity or ipcache entries", "endpoint", ep.owner(), "err", err)
			}
			continue
		}
		if res.restored && res.old != res.new {
			a.log.Warn("endpoint's identity changed while the agent was down; it takes the new one", "endpoint", ep.owner(), "old", res.old, "new", res.new)
		}
	}
}

// publishUsageLoop publishes the node's pod IP usage in its node record
// when it changes (at most every 10s).
func (a *Agent) publishUsageLoop(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	var last []node.CIDRUsage
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		usage := a.usage()
		if slices.Equal(usage, last) {
			continue
		}
		if err := a.claimer.Load().Publish(ctx, usage); err != nil {
			continue
		}
		last = usage
	}
}

func (a *Agent) usage() []node.CIDRUsage {
	ips := a.ips.Load()
	if ips == nil {
		return nil
	}
	var out []node.CIDRUsage
	for _, c := range ips.Stats().CIDRs {
		out = append(out, node.CIDRUsage{CIDR: c.CIDR, Used: c.Used, Free: c.Free})
	}
	return out
}

// shutdown releases what Run took, keeping what the datapath and the
// cluster need across a restart.
func (a *Agent) shutdown() error {
	var errs []error
	if g := a.gossip.Load(); g != nil {
		// A restart must not look like a departure, nor like a crash.
		errs = append(errs, a.closeGossip(g))
	}
	if ips := a.ips.Load(); ips != nil {
		errs = append(errs, ips.Close())
	}
	if s := a.session.Load(); s != nil {
		s.Detach()
	}
	if c := a.client.Load(); c != nil {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

func readLease(path string) kvstore.LeaseID {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64)
	if err != nil {
		return 0
	}
	return kvstore.LeaseID(n)
}

func writeLease(path string, lease kvstore.LeaseID) error {
	return writeFileAtomic(path, []byte(strconv.FormatInt(int64(lease), 16)+"\n"), 0o600)
}

// --- endpointDeps ---

func (a *Agent) families() []ipam.Family { return a.cfg.Families }

func (a *Agent) allocateIP(owner string, f ipam.Family) (netip.Addr, netip.Prefix, error) {
	ips := a.ips.Load()
	if ips == nil {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("pod IPs: %w", ErrNotReady)
	}
	if err := a.beforeAllocate(ips, owner); err != nil {
		return netip.Addr{}, netip.Prefix{}, err
	}
	ip, err := ips.Allocate(owner, f)
	if errors.Is(err, podip.ErrFull) {
		ip, err = a.allocateClaiming(ips, owner, f)
	}
	if err != nil {
		return netip.Addr{}, netip.Prefix{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.cidrs {
		if c.Contains(ip) {
			return ip, c, nil
		}
	}
	return ip, netip.PrefixFrom(ip, ip.BitLen()), nil
}

// allocateClaiming allocates an IP of family f to owner after every CIDR
// of f was found full: it claims one more CIDR, unless a pod that found
// them full at the same time has claimed one already.
func (a *Agent) allocateClaiming(ips *podip.Allocator, owner string, f ipam.Family) (netip.Addr, error) {
	a.claimMu.Lock()
	defer a.claimMu.Unlock()
	ip, err := ips.Allocate(owner, f)
	if !errors.Is(err, podip.ErrFull) {
		return ip, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, cerr := a.claimer.Load().ClaimMore(ctx, f)
	if cerr != nil {
		return netip.Addr{}, fmt.Errorf("%w; claiming another CIDR: %w", err, cerr)
	}
	if err := ips.AddCIDR(p); err != nil {
		return netip.Addr{}, err
	}
	a.mu.Lock()
	a.cidrs = append(a.cidrs, p)
	a.mu.Unlock()
	return ips.Allocate(owner, f)
}

func (a *Agent) releaseIPs(owner string) error {
	if ips := a.ips.Load(); ips != nil {
		return a.releasePodIPs(ips, owner)
	}
	return nil
}

func (a *Agent) allocateIdentity(ctx context.Context, set labels.Set) (identity.ID, error) {
	ids := a.ids.Load()
	if ids == nil {
		return 0, fmt.Errorf("identities: %w", ErrNotReady)
	}
	return ids.Allocate(ctx, set)
}

func (a *Agent) releaseIdentity(set labels.Set) error {
	if ids := a.ids.Load(); ids != nil {
		return ids.Release(set)
	}
	return nil
}

// publish writes a local endpoint's ipcache entry to etcd, and then hands
// it to the mirror and the named ports at once: the node's own pod is
// classified with its (new) identity without waiting for the entry to come
// back through the endpoints watch, which delivers the same value later
// (an older one still queued there is followed by this one).
func (a *Agent) publish(ctx context.Context, e ipcache.Entry) error {
	e.Node = a.cfg.Node
	key := ipcache.KeyOf(e.IP)
	if err := a.session.Load().Put(ctx, a.keys.Endpoint(key), string(e.Encode())); err != nil {
		return err
	}
	endpointHandler{a.mirror, a.cfg.Cluster}.Upsert(key, e)
	namedPortHandler{a.pol}.Upsert(key, e)
	return nil
}

func (a *Agent) unpublish(ctx context.Context, ip netip.Addr) error {
	return a.session.Load().Delete(ctx, a.keys.Endpoint(ipcache.KeyOf(ip)))
}

// AddEndpoint gives a pod its IPs and identity and installs it (the CNI
// ADD path). It is idempotent per namespace and pod.
//
// The pod's labels, its namespace's labels and its ports come from the
// metadata the control plane publishes in etcd: a spec without labels
// waits for them (bounded by ctx and Config.PodMetadataWait; ErrNoMetadata
// when they do not come). A spec with labels is used until etcd has the
// pod's metadata; then etcd's win, and the endpoint is relabelled when
// they change. A repeat with other labels is refused (ErrEndpointExists)
// while the labels still come from the first request, and its labels are
// ignored once they come from etcd.
func (a *Agent) AddEndpoint(ctx context.Context, spec EndpointSpec) (Endpoint, error) {
	meta := a.meta.Load()
	if a.session.Load() == nil || a.ids.Load() == nil || a.ips.Load() == nil || meta == nil {
		return Endpoint{}, ErrNotReady
	}
	return a.eps.add(ctx, a, meta, spec)
}

// DeleteEndpoint removes a pod (the CNI DEL path); an unknown pod is not
// an error.
func (a *Agent) DeleteEndpoint(ctx context.Context, namespace, pod string) error {
	return a.deleteEndpoint(ctx, namespace, pod, "")
}

// deleteEndpoint is DeleteEndpoint limited, with a containerID, to the
// pod's endpoint of that container (endpoints.remove).
func (a *Agent) deleteEndpoint(ctx context.Context, namespace, pod, containerID string) error {
	if a.session.Load() == nil || a.ips.Load() == nil {
		return ErrNotReady
	}
	return a.eps.remove(ctx, a, namespace, pod, containerID)
}

// Endpoints returns the local endpoints, sorted by namespace and pod.
// Before the agent has read its state directory it returns none.
func (a *Agent) Endpoints() []Endpoint {
	if !a.started.Load() {
		return nil
	}
	return a.eps.list()
}
