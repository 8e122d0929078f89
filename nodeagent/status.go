package nodeagent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

// The agent's states (Status.State), as the API and metrics report them.
const (
	// StateStarting: Run has not yet reached every part (etcd, the
	// caches' first lists, the maps, gossip).
	StateStarting = "starting"
	// StateOK: every part works.
	StateOK = "ok"
	// StateDegraded: the agent runs, but something is wrong; Reasons say
	// what.
	StateDegraded = "degraded"
)

// Status is the agent's health, as `meshctl status` shows it.
type Status struct {
	Node, Cluster string
	ClusterID     int
	Version       string
	// State is StateStarting, StateOK or StateDegraded; Reasons say why
	// not ok.
	State   string
	Reasons []string
	Uptime  time.Duration

	Etcd   EtcdStatus
	Gossip GossipStatus
	Caches []CacheStatus
	Maps   []MapStatus
	IPAM   IPAMStatus
	// Routing is how the node reaches other nodes' pods (routing.go).
	Routing RoutingStatus
	// PolicyRevision is the etcd revision up to which the node enforces
	// the policies (published in its node record; see policyrev.go).
	PolicyRevision int64
}

// EtcdStatus is the etcd connection's state.
type EtcdStatus struct {
	Endpoints  []string
	State      string // "connected", "reconnecting", "down"
	Lease      int64
	LastError  string
	Generation int
	OwnedKeys  int
	// Repairs counts the agent's own keys (its node record, its
	// endpoints) it wrote back after someone changed or deleted them.
	Repairs int64
}

// GossipStatus counts gossip members by state (health.Stats).
type GossipStatus struct {
	Address                                              string
	Alive, Suspect, Dead, Left, Unresponsive, Restarting int
	// HealthScore is this agent's Lifeguard awareness (0: healthy).
	HealthScore int
	// UnconfirmedDeaths counts deaths gossip declared that the direct
	// check contradicted.
	UnconfirmedDeaths uint64
}

// CacheStatus is one watch cache's state.
type CacheStatus struct {
	Name, Prefix string
	Entries      int
	Synced       bool
	Revision     int64
	// Invalid counts the invalid values the cache has seen; InvalidNow
	// the keys whose value is invalid now, listed in InvalidValues.
	Invalid, Relists int64
	Events           int64
	InvalidNow       int
	InvalidValues    []InvalidValue
}

// InvalidValue is an etcd value the agent cannot decode, and what it
// enforces instead.
type InvalidValue struct {
	Key         string // the full etcd key
	Reason      string // what is wrong with the value
	ModRevision int64
	// LastGood is true when the key's last good value is in force.
	LastGood bool
	// InForce says what the agent enforces meanwhile: "the last good
	// version", or, for a value never seen valid, what it isolated.
	InForce string
}

// MapStatus is one pinned map and its reconciler.
type MapStatus struct {
	Name, PinPath string
	MaxEntries    int
	reconciler.Status
}

// IPAMStatus is the node's pod CIDRs and their use.
type IPAMStatus struct {
	PodCIDRs   []netip.Prefix
	Used, Free int
	// Conflicts are pod IPs this node's records give to more than one pod
	// (found on start; each makes the agent degraded until all but one of
	// its pods are gone).
	Conflicts []IPConflict
	// Unreferenced counts allocated pod IPs that no endpoint state file or
	// etcd entry references; they stay allocated (see reconcile_ips.go).
	Unreferenced int
}

// Status returns the agent's status. It is safe from any goroutine.
func (a *Agent) Status() Status {
	st := Status{
		Node: a.cfg.Node, Cluster: a.cfg.Cluster, ClusterID: a.cfg.ClusterID, Version: Version,
		Uptime: time.Since(a.start).Round(time.Millisecond),
	}
	st.Etcd = a.etcdStatus()
	if g := a.gossip.Load(); g != nil {
		gs := g.Stats()
		st.Gossip = GossipStatus{
			Address: g.LocalAddr().String(),
			Alive:   gs.Alive, Suspect: gs.Suspect, Dead: gs.Dead, Left: gs.Left,
			Unresponsive: gs.Unresponsive, Restarting: gs.Restarting,
			HealthScore: gs.HealthScore, UnconfirmedDeaths: gs.UnconfirmedDeaths,
		}
	}
	st.Caches = a.cacheStatus()
	st.PolicyRevision = a.enforcedRev.Load()
	if !a.started.Load() {
		st.State = StateStarting
		st.Reasons = append(st.Reasons, "opening the pinned maps")
		return st
	}
	for _, r := range a.recs {
		st.Maps = append(st.Maps, MapStatus{Name: r.name, PinPath: r.path, MaxEntries: r.max, Status: r.status()})
	}
	a.mu.Lock()
	st.IPAM.PodCIDRs = slices.Clone(a.cidrs)
	a.mu.Unlock()
	for _, u := range a.usage() {
		st.IPAM.Used += u.Used
		st.IPAM.Free += u.Free
	}
	st.IPAM.Conflicts, st.IPAM.Unreferenced = a.podIPs.problems()
	st.Routing = a.routingStatus()

	switch {
	case !a.ready.Load():
		st.State = StateStarting
		if st.Etcd.State != "connected" {
			st.Reasons = append(st.Reasons, "waiting for etcd: "+st.Etcd.LastError)
		} else {
			st.Reasons = append(st.Reasons, "loading cluster state from etcd")
		}
	default:
		st.State = StateOK
		if st.Etcd.State != "connected" {
			st.Reasons = append(st.Reasons, fmt.Sprintf("etcd %s: %s (the datapath keeps its last state)", st.Etcd.State, st.Etcd.LastError))
		}
	}
	for _, m := range st.Maps {
		if m.Pending > 0 && m.LastError != "" {
			st.Reasons = append(st.Reasons, fmt.Sprintf("map %s: %d entries not written: %s", m.Name, m.Pending, m.LastError))
		}
	}
	for _, cs := range st.Caches {
		st.Reasons = append(st.Reasons, invalidReasons(cs)...)
	}
	if a.started.Load() {
		st.Reasons = append(st.Reasons, a.dp.problems()...)
		st.Reasons = append(st.Reasons, routingReasons(st.Routing)...)
		st.Reasons = append(st.Reasons, conflictReasons(st.IPAM.Conflicts)...)
		if n, err := a.pol.errors(); n > 0 {
			st.Reasons = append(st.Reasons, fmt.Sprintf("policy: %d entries could not become map keys: %v", n, err))
		}
		if p := a.pol.cidrProblem(); p != "" {
			st.Reasons = append(st.Reasons, p)
		}
	}
	if st.State == StateOK && len(st.Reasons) > 0 {
		st.State = StateDegraded
	}
	return st
}

func (a *Agent) etcdStatus() EtcdStatus {
	var st EtcdStatus
	c := a.client.Load()
	a.mu.Lock()
	etcdErr := a.etcdErr
	a.mu.Unlock()
	if c == nil {
		st.Endpoints = a.cfg.Etcd.Endpoints
		st.State = "down"
		if etcdErr != nil {
			st.LastError = etcdErr.Error()
		} else {
			st.LastError = "connecting"
		}
		return st
	}
	st.Endpoints = c.Endpoints()
	st.State = "connected"
	if s := a.session.Load(); s != nil {
		ss := s.State()
		st.Lease, st.Generation, st.OwnedKeys, st.Repairs = int64(ss.Lease), ss.Generation, s.Owned(), s.Repairs()
		if ss.Lease == 0 {
			st.State = "reconnecting"
			if ss.Err != nil {
				st.LastError = ss.Err.Error()
			}
		}
	}
	if etcdErr != nil {
		st.State = "reconnecting"
		st.LastError = etcdErr.Error()
	}
	return st
}

func (a *Agent) cacheStatus() []CacheStatus {
	var out []CacheStatus
	if c := a.nodesC.Load(); c != nil {
		out = append(out, cacheStat(cacheNodes, a.keys.NodesPrefix(), c))
	}
	if c := a.epC.Load(); c != nil {
		out = append(out, cacheStat(cacheEndpoints, a.keys.EndpointsPrefix(), c))
	}
	if c := a.svcC.Load(); c != nil {
		out = append(out, cacheStat(cacheServices, a.keys.ServicesPrefix(), c))
	}
	if c := a.polC.Load(); c != nil {
		out = append(out, cacheStat(cachePolicies, a.keys.PoliciesPrefix(), c))
	}
	if c := a.podC.Load(); c != nil {
		out = append(out, cacheStat(cachePods, a.keys.NodePodsPrefix(a.cfg.Node), c))
	}
	if c := a.nsC.Load(); c != nil {
		out = append(out, cacheStat(cacheNamespaces, a.keys.NamespacesPrefix(), c))
	}
	if ids := a.ids.Load(); ids != nil {
		out = append(out, cacheStat(cacheIdentities, a.keys.IdentityIDPrefix(), identityCache{ids}))
	}
	return out
}

// watchCache is what the status reads of a watch cache.
type watchCache interface {
	Stats() kvstore.CacheStats
	Synced() <-chan struct{}
	Invalid() []kvstore.InvalidKey
}

// identityCache is the allocator's identity cache as a watchCache.
type identityCache struct{ ids *allocator.Allocator }

func (c identityCache) Stats() kvstore.CacheStats     { return c.ids.CacheStats() }
func (c identityCache) Synced() <-chan struct{}       { return c.ids.Synced() }
func (c identityCache) Invalid() []kvstore.InvalidKey { return c.ids.Invalid() }

func cacheStat(name, prefix string, c watchCache) CacheStatus {
	s := c.Stats()
	cs := CacheStatus{
		Name: name, Prefix: prefix, Entries: s.Entries, Revision: s.Revision, Invalid: s.Invalid, Relists: s.Relists, Events: s.Events,
		InvalidNow: s.InvalidKeys,
	}
	if s.InvalidKeys > 0 {
		cs.InvalidValues = invalidValues(name, prefix, c.Invalid())
		cs.InvalidNow = max(cs.InvalidNow, len(cs.InvalidValues))
	}
	select {
	case <-c.Synced():
		cs.Synced = true
	default:
	}
	return cs
}

// NodeInfo is a node as `meshctl node list` shows it.
type NodeInfo struct {
	node.Record
	Health      string // alive, suspect, unresponsive, restarting, dead, left, unknown
	HealthSince time.Time
	Registered  bool
	Local       bool
}

// Nodes lists the nodes etcd knows and those gossip knows, with health.
func (a *Agent) Nodes() []NodeInfo {
	byName := make(map[string]*NodeInfo)
	if c := a.nodesC.Load(); c != nil {
		c.Range(func(name string, r node.Record) bool {
			byName[name] = &NodeInfo{Record: r, Registered: true, Health: "unknown"}
			return true
		})
	}
	if g := a.gossip.Load(); g != nil {
		for _, m := range g.Members() {
			n := byName[m.Name]
			if n == nil {
				n = &NodeInfo{Record: node.Record{Name: m.Name, GossipAddr: m.Addr.String()}}
				byName[m.Name] = n
			}
			n.Health, n.HealthSince = strings.ToLower(m.State.String()), m.Since
		}
	}
	out := make([]NodeInfo, 0, len(byName))
	for name, n := range byName {
		n.Local = name == a.cfg.Node
		if n.Local {
			n.Health = "alive"
		}
		out = append(out, *n)
	}
	slices.SortFunc(out, func(x, y NodeInfo) int { return strings.Compare(x.Name, y.Name) })
	return out
}
