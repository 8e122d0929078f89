package nodeagent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

// Status is the agent's health, as `meshctl status` shows it.
type Status struct {
	Node, Cluster string
	ClusterID     int
	Version       string
	// State is "starting", "ok" or "degraded"; Reasons say why not ok.
	State   string
	Reasons []string
	Uptime  time.Duration

	Etcd   EtcdStatus
	Gossip GossipStatus
	Caches []CacheStatus
	Maps   []MapStatus
	IPAM   IPAMStatus
}

// EtcdStatus is the etcd connection's state.
type EtcdStatus struct {
	Endpoints  []string
	State      string // "connected", "reconnecting", "down"
	Lease      int64
	LastError  string
	Generation int
	OwnedKeys  int
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
	Name, Prefix     string
	Entries          int
	Synced           bool
	Revision         int64
	Invalid, Relists int64
	Events           int64
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
	if !a.started.Load() {
		st.State = "starting"
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

	switch {
	case !a.ready.Load():
		st.State = "starting"
		if st.Etcd.State != "connected" {
			st.Reasons = append(st.Reasons, "waiting for etcd: "+st.Etcd.LastError)
		} else {
			st.Reasons = append(st.Reasons, "loading cluster state from etcd")
		}
	default:
		st.State = "ok"
		if st.Etcd.State != "connected" {
			st.Reasons = append(st.Reasons, fmt.Sprintf("etcd %s: %s (the datapath keeps its last state)", st.Etcd.State, st.Etcd.LastError))
		}
	}
	for _, m := range st.Maps {
		if m.Pending > 0 && m.LastError != "" {
			st.Reasons = append(st.Reasons, fmt.Sprintf("map %s: %d entries not written: %s", m.Name, m.Pending, m.LastError))
		}
	}
	if a.started.Load() {
		st.Reasons = append(st.Reasons, a.dp.problems()...)
		if n, err := a.pol.errors(); n > 0 {
			st.Reasons = append(st.Reasons, fmt.Sprintf("policy: %d entries could not become map keys: %v", n, err))
		}
	}
	if st.State == "ok" && len(st.Reasons) > 0 {
		st.State = "degraded"
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
		st.Lease, st.Generation, st.OwnedKeys = int64(ss.Lease), ss.Generation, s.Owned()
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
		out = append(out, cacheStat("nodes", a.keys.NodesPrefix(), c))
	}
	if c := a.epC.Load(); c != nil {
		out = append(out, cacheStat("endpoints", a.keys.EndpointsPrefix(), c))
	}
	if c := a.svcC.Load(); c != nil {
		out = append(out, cacheStat("services", a.keys.ServicesPrefix(), c))
	}
	if ids := a.ids.Load(); ids != nil {
		s := ids.Stats()
		out = append(out, CacheStatus{Name: "identities", Prefix: a.keys.IdentityIDPrefix(), Entries: s.CacheEntries, Synced: true, Invalid: s.InvalidCached})
	}
	return out
}

func cacheStat[T any](name, prefix string, c *kvstore.Cache[T]) CacheStatus {
	s := c.Stats()
	cs := CacheStatus{Name: name, Prefix: prefix, Entries: s.Entries, Revision: s.Revision, Invalid: s.Invalid, Relists: s.Relists, Events: s.Events}
	select {
	case <-c.Synced():
		cs.Synced = true
	default:
	}
	return cs
}

// NodeInfo is a node as `meshctl node list` shows it.
type NodeInfo struct {
	nodecidr.NodeRecord
	Health      string // alive, suspect, unresponsive, restarting, dead, left, unknown
	HealthSince time.Time
	Registered  bool
	Local       bool
}

// Nodes lists the nodes etcd knows and those gossip knows, with health.
func (a *Agent) Nodes() []NodeInfo {
	byName := make(map[string]*NodeInfo)
	if c := a.nodesC.Load(); c != nil {
		c.Range(func(name string, r nodecidr.NodeRecord) bool {
			byName[name] = &NodeInfo{NodeRecord: r, Registered: true, Health: "unknown"}
			return true
		})
	}
	if g := a.gossip.Load(); g != nil {
		for _, m := range g.Members() {
			n := byName[m.Name]
			if n == nil {
				n = &NodeInfo{NodeRecord: nodecidr.NodeRecord{Name: m.Name, GossipAddr: m.Addr.String()}}
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
