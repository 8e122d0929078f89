package nodeagent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/nodeagent"
	"github.com/meshplane/meshplane/service"
)

var nodeSeq atomic.Int64

// testAgent is an agent running in this process with its own pins,
// state, socket and gossip port.
type testAgent struct {
	t      *testing.T
	cfg    nodeagent.Config
	a      *nodeagent.Agent
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// agentConfig returns the config of node i of a test cluster.
func agentConfig(t *testing.T, s *etcdtest.Server, cluster string, i int) nodeagent.Config {
	t.Helper()
	// The pid keeps names apart from other test processes sharing the bpffs.
	name := fmt.Sprintf("node%d-%d-%d", i, os.Getpid(), nodeSeq.Add(1))
	dir := t.TempDir()
	cfg := nodeagent.Config{
		Node: name, Cluster: cluster, ClusterID: 1,
		Etcd:           s.Config(),
		StateDir:       filepath.Join(dir, "state"),
		NodeIPs:        []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 1, byte(i)})},
		GossipAddr:     netip.MustParseAddr("127.0.0.1"),
		GossipPort:     -1,
		GossipInsecure: true,
		APISocket:      filepath.Join(dir, "api.sock"),
		APISocketGroup: -1,
		// In-process agents share the test's network namespace: no routes.
		RoutingMode: nodeagent.RoutingNone,
	}
	if os.Getenv("MESHPLANE_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	t.Cleanup(func() { _ = bpf.RemovePins(bpf.Config{Node: name}) })
	return cfg
}

// mapsOnly returns the config of node 1 of a new test cluster with the
// "none" datapath (the maps only, no programs), the cluster's etcd client
// and its keys.
func mapsOnly(t *testing.T) (nodeagent.Config, *kvstore.Client, kvstore.Keys) {
	t.Helper()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone
	return cfg, srv.Client(t), keys
}

func startAgent(t *testing.T, cfg nodeagent.Config) *testAgent {
	t.Helper()
	bpftest.Require(t)
	a, err := nodeagent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{t: t, cfg: cfg, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- a.Run(ctx) }()
	t.Cleanup(ta.stop)
	return ta
}

// stop stops the agent the way SIGTERM does; it is idempotent.
func (ta *testAgent) stop() {
	ta.once.Do(func() {
		ta.cancel()
		select {
		case err := <-ta.done:
			if err != nil {
				ta.t.Errorf("agent %s: Run() = %v", ta.cfg.Node, err)
			}
		case <-time.After(30 * time.Second):
			ta.t.Errorf("agent %s did not stop within 30s", ta.cfg.Node)
		}
	})
}

func (ta *testAgent) waitOK(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, ta.cfg.Node+" is ok", func() error {
		if st := ta.a.Status(); st.State != "ok" {
			return fmt.Errorf("state %s: %v", st.State, st.Reasons)
		}
		return nil
	})
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pinned opens a node's pinned map the way the datapath sees it.
func pinned[K, V comparable](t *testing.T, node, name string) *bpf.Map[K, V] {
	t.Helper()
	m, err := bpf.OpenPinned[K, V](filepath.Join(bpf.Config{Node: node}.PinDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func ipcacheOf(t *testing.T, node string) *bpf.Map[bpf.IPCacheKey, bpf.IPCacheValue] {
	return pinned[bpf.IPCacheKey, bpf.IPCacheValue](t, node, bpf.IPCacheMapName)
}

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// exact finds the entry for exactly p (Lookup would return a covering
// prefix's).
func exact(m *bpf.Map[bpf.IPCacheKey, bpf.IPCacheValue], p netip.Prefix) (bpf.IPCacheValue, bool, error) {
	want := bpf.IPCacheKeyFor(p)
	var v bpf.IPCacheValue
	found := false
	err := m.Iterate(func(k bpf.IPCacheKey, val bpf.IPCacheValue) bool {
		if k == want {
			v, found = val, true
			return false
		}
		return true
	})
	return v, found, err
}

// hasIPCache checks m's exact entry for p.
func hasIPCache(m *bpf.Map[bpf.IPCacheKey, bpf.IPCacheValue], p netip.Prefix, id identity.ID, node netip.Addr) error {
	v, ok, err := exact(m, p)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s: %s missing", m.Path(), p)
	}
	if v.Identity != uint32(id) || v.NodeIP() != node {
		return fmt.Errorf("%s: %s = identity %d node %s, want %d %s", m.Path(), p, v.Identity, v.NodeIP(), id, node)
	}
	return nil
}

func lacksIPCache(m *bpf.Map[bpf.IPCacheKey, bpf.IPCacheValue], p netip.Prefix) error {
	_, ok, err := exact(m, p)
	if err != nil {
		return err
	}
	if ok {
		return fmt.Errorf("%s: %s still present", m.Path(), p)
	}
	return nil
}

func putJSON(t *testing.T, c *kvstore.Client, key string, v []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Put(ctx, key, v); err != nil {
		t.Fatal(err)
	}
}

func putEndpoint(t *testing.T, c *kvstore.Client, keys kvstore.Keys, e ipcache.Entry) {
	t.Helper()
	putJSON(t, c, keys.Endpoint(ipcache.KeyOf(e.IP)), e.Encode())
}

func putService(t *testing.T, c *kvstore.Client, keys kvstore.Keys, s service.Service) {
	t.Helper()
	b := fmt.Appendf(nil, "%s", mustJSON(s))
	putJSON(t, c, keys.Service(s.Namespace, s.Name), b)
}

// serviceBackends reads a frontend's backends from a node's pinned maps,
// in slot order.
func serviceBackends(t *testing.T, node string, fe netip.AddrPort, proto uint8) ([]netip.AddrPort, error) {
	svcs := pinned[bpf.ServiceKey, bpf.ServiceValue](t, node, bpf.ServicesMapName)
	bes := pinned[bpf.BackendKey, bpf.BackendValue](t, node, bpf.BackendsMapName)
	master, ok, err := svcs.Lookup(bpf.ServiceKeyFor(fe, proto, 0))
	if err != nil || !ok {
		return nil, fmt.Errorf("%s: frontend %s: found %v, err %w", node, fe, ok, err)
	}
	var out []netip.AddrPort
	for slot := uint16(1); slot <= master.Count; slot++ {
		s, ok, err := svcs.Lookup(bpf.ServiceKeyFor(fe, proto, slot))
		if err != nil || !ok {
			return nil, fmt.Errorf("%s: %s slot %d: found %v, err %w", node, fe, slot, ok, err)
		}
		b, ok, err := bes.Lookup(bpf.BackendKey{ID: s.BackendID})
		if err != nil || !ok {
			return nil, fmt.Errorf("%s: backend %d: found %v, err %w", node, s.BackendID, ok, err)
		}
		out = append(out, b.AddrPort())
	}
	return out, nil
}

func sameBackends(got []netip.AddrPort, want ...string) error {
	g := make([]string, len(got))
	for i, a := range got {
		g[i] = a.String()
	}
	gs, ws := strings.Join(sortStrings(g), ","), strings.Join(sortStrings(want), ",")
	if gs != ws {
		return fmt.Errorf("backends %s, want %s", gs, ws)
	}
	return nil
}

// TestAgentsMirrorAndGossip runs three agents on one etcd: entries written
// in etcd reach every agent's maps; an agent that stops gracefully is read
// as restarting by the others, which keep its routes and backends; one that
// leaves for good is read as left, and they take its routes and backends
// out; they come back when the agent does. (A crash, SIGKILL, needs a
// process of its own: e2e's TestCrashRemovesBackends.)
func TestAgentsMirrorAndGossip(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(t)
	var agents []*testAgent
	for i := range 3 {
		agents = append(agents, startAgent(t, agentConfig(t, srv, cluster, i+1)))
	}
	for _, ta := range agents {
		ta.waitOK(t)
	}
	for _, ta := range agents {
		eventually(t, 15*time.Second, ta.cfg.Node+" sees every node alive in gossip", func() error {
			if g := ta.a.Status().Gossip; g.Alive != 3 {
				return fmt.Errorf("gossip %+v", g)
			}
			return nil
		})
	}
	nodeIP := func(i int) netip.Addr { return agents[i].cfg.NodeIPs[0] }
	cidrOf := func(i int) netip.Prefix { return agents[i].a.Status().IPAM.PodCIDRs[0] }

	// Every agent has every node's address and pod CIDR route.
	for _, ta := range agents {
		m := ipcacheOf(t, ta.cfg.Node)
		eventually(t, 10*time.Second, ta.cfg.Node+" has every node", func() error {
			for i, other := range agents {
				id := identity.RemoteNode
				if other == ta {
					id = identity.Host
				}
				if err := hasIPCache(m, host(nodeIP(i)), id, nodeIP(i)); err != nil {
					return err
				}
				if err := hasIPCache(m, cidrOf(i), identity.World, nodeIP(i)); err != nil {
					return err
				}
			}
			return nil
		})
	}

	// An ipcache entry and a service written in etcd reach every agent.
	podIP := cidrOf(1).Addr().Next().Next()
	putEndpoint(t, client, keys, ipcache.Entry{IP: podIP, Identity: 70000, Node: agents[1].cfg.Node})
	podOn2 := netip.AddrPortFrom(cidrOf(2).Addr().Next().Next(), 8080)
	podOn0 := netip.AddrPortFrom(cidrOf(0).Addr().Next().Next(), 8080)
	fe := netip.MustParseAddrPort("10.96.0.10:80")
	putService(t, client, keys, service.Service{Namespace: "default", Name: "web", Frontends: []service.Frontend{{
		Address: fe, Protocol: service.TCP,
		Backends: []service.Backend{{Address: podOn0, Node: agents[0].cfg.Node}, {Address: podOn2, Node: agents[2].cfg.Node}},
	}}})
	for _, ta := range agents {
		m := ipcacheOf(t, ta.cfg.Node)
		eventually(t, 10*time.Second, ta.cfg.Node+" has the pod and the service", func() error {
			if err := hasIPCache(m, host(podIP), 70000, nodeIP(1)); err != nil {
				return err
			}
			got, err := serviceBackends(t, ta.cfg.Node, fe, 6)
			if err != nil {
				return err
			}
			return sameBackends(got, podOn0.String(), podOn2.String())
		})
	}

	// Agent 2 stops gracefully, as for a restart or an upgrade: the others
	// read it as restarting and keep its route and backend.
	dead := agents[2]
	dead.stop()
	for _, ta := range agents[:2] {
		m := ipcacheOf(t, ta.cfg.Node)
		eventually(t, 15*time.Second, ta.cfg.Node+" reads the stopped node as restarting", func() error {
			if h := healthOf(ta, dead.cfg.Node); h != "restarting" {
				return fmt.Errorf("health %s", h)
			}
			return nil
		})
		if err := hasIPCache(m, cidrOf2(dead), identity.World, nodeIP(2)); err != nil {
			t.Errorf("%s during the restart: %v", ta.cfg.Node, err)
		}
		got, err := serviceBackends(t, ta.cfg.Node, fe, 6)
		if err == nil {
			err = sameBackends(got, podOn0.String(), podOn2.String())
		}
		if err != nil {
			t.Errorf("%s during the restart: %v", ta.cfg.Node, err)
		}
	}
	leaver := dead.cfg
	leaver.LeaveOnShutdown = true // for its next stop
	agents[2] = startAgent(t, leaver)
	agents[2].waitOK(t)
	for _, ta := range agents[:2] {
		eventually(t, 15*time.Second, ta.cfg.Node+" reads the restarted node as alive", func() error {
			if h := healthOf(ta, dead.cfg.Node); h != "alive" {
				return fmt.Errorf("health %s", h)
			}
			return nil
		})
	}

	// Agent 2 leaves for good: the others take out its route and backend;
	// its address and its pods' identities stay.
	dead = agents[2]
	dead.stop()
	for _, ta := range agents[:2] {
		m := ipcacheOf(t, ta.cfg.Node)
		eventually(t, 15*time.Second, ta.cfg.Node+" drops the departed node's route and backend", func() error {
			if h := healthOf(ta, dead.cfg.Node); h != "left" {
				return fmt.Errorf("health %s", h)
			}
			if err := lacksIPCache(m, cidrOf2(dead)); err != nil {
				return err
			}
			got, err := serviceBackends(t, ta.cfg.Node, fe, 6)
			if err != nil {
				return err
			}
			if err := sameBackends(got, podOn0.String()); err != nil {
				return err
			}
			return hasIPCache(m, host(nodeIP(2)), identity.RemoteNode, nodeIP(2))
		})
	}

	// It comes back: its route and backend return.
	agents[2] = startAgent(t, dead.cfg)
	agents[2].waitOK(t)
	for _, ta := range agents[:2] {
		m := ipcacheOf(t, ta.cfg.Node)
		eventually(t, 15*time.Second, ta.cfg.Node+" restores the node's route and backend", func() error {
			if err := hasIPCache(m, cidrOf(2), identity.World, nodeIP(2)); err != nil {
				return err
			}
			got, err := serviceBackends(t, ta.cfg.Node, fe, 6)
			if err != nil {
				return err
			}
			return sameBackends(got, podOn0.String(), podOn2.String())
		})
	}
	nodes := agents[0].a.Nodes()
	if len(nodes) != 3 {
		t.Fatalf("Nodes() = %d nodes, want 3", len(nodes))
	}
	for _, n := range nodes {
		if n.Health != "alive" || !n.Registered {
			t.Errorf("node %s: health %s, registered %v; want alive and registered", n.Name, n.Health, n.Registered)
		}
	}
}

// healthOf is node's health as ta's agent reads it.
func healthOf(ta *testAgent, node string) string {
	for _, n := range ta.a.Nodes() {
		if n.Name == node {
			return n.Health
		}
	}
	return "(not listed)"
}

// cidrOf2 is the pod CIDR a stopped agent held (from its node record).
func cidrOf2(ta *testAgent) netip.Prefix { return ta.a.Status().IPAM.PodCIDRs[0] }

// TestAgentRestartKeepsMaps restarts an agent under a watcher that reads
// the pinned ipcache the whole time: the maps are the same kernel objects
// before and after, no entry is ever missing, and the restarted agent
// writes nothing (the state did not change).
func TestAgentRestartKeepsMaps(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(t)
	cfg := agentConfig(t, srv, cluster, 1)
	const n = 3000
	var want []netip.Prefix
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
		putEndpoint(t, client, keys, ipcache.Entry{IP: ip, Identity: identity.ID(70000 + i), Node: "elsewhere"})
		want = append(want, host(ip))
	}
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	m := ipcacheOf(t, cfg.Node)
	eventually(t, 10*time.Second, "all entries installed", func() error {
		for _, p := range want {
			if _, ok, err := m.Lookup(bpf.IPCacheKeyFor(p)); err != nil || !ok {
				return fmt.Errorf("%s missing (%w)", p, err)
			}
		}
		return nil
	})
	idBefore, err := m.ID()
	if err != nil {
		t.Fatal(err)
	}

	// The watcher walks the whole map, over and over, during the restart.
	var missing atomic.Int64
	var rounds atomic.Int64
	stopWatch := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopWatch:
				return
			default:
			}
			for _, p := range want {
				if _, ok, err := m.Lookup(bpf.IPCacheKeyFor(p)); err != nil || !ok {
					missing.Add(1)
				}
			}
			rounds.Add(1)
		}
	}()
	ta.stop()
	ta2 := startAgent(t, cfg)
	ta2.waitOK(t)
	eventually(t, 10*time.Second, "the restarted agent's ipcache reconciler synced", func() error {
		for _, ms := range ta2.a.Status().Maps {
			if ms.Name == "ipcache" && !ms.Synced {
				return errors.New("not synced")
			}
		}
		return nil
	})
	close(stopWatch)
	wg.Wait()
	if missing.Load() != 0 {
		t.Errorf("%d lookups found an entry missing during the restart (%d full walks)", missing.Load(), rounds.Load())
	}
	m2 := ipcacheOf(t, cfg.Node)
	idAfter, err := m2.ID()
	if err != nil {
		t.Fatal(err)
	}
	if idAfter != idBefore {
		t.Errorf("ipcache map ID %d after the restart, want %d (the same map)", idAfter, idBefore)
	}
	for _, ms := range ta2.a.Status().Maps {
		if ms.Puts != 0 || ms.Deletes != 0 {
			t.Errorf("map %s: restarted agent wrote %d and deleted %d entries; want none (nothing changed)", ms.Name, ms.Puts, ms.Deletes)
		}
	}
}

// TestAgentEtcdOutage stops etcd under a running agent: the datapath keeps
// its state, the agent reports degraded, and when etcd is back the agent
// catches up with what changed.
func TestAgentEtcdOutage(t *testing.T) {
	t.Parallel()
	own := etcdtest.Start(t)
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := own.Client(t)
	cfg := agentConfig(t, own, cluster, 1)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ip1 := netip.MustParseAddr("10.201.0.1")
	putEndpoint(t, client, keys, ipcache.Entry{IP: ip1, Identity: 70001, Node: "elsewhere"})
	m := ipcacheOf(t, cfg.Node)
	eventually(t, 10*time.Second, "entry installed", func() error {
		return hasIPCache(m, host(ip1), 70001, netip.Addr{})
	})
	before, err := m.Count()
	if err != nil {
		t.Fatal(err)
	}

	own.Stop()
	eventually(t, 15*time.Second, "agent reports degraded", func() error {
		st := ta.a.Status()
		if st.State != "degraded" || !strings.Contains(strings.Join(st.Reasons, ";"), "etcd") {
			return fmt.Errorf("state %s, reasons %v", st.State, st.Reasons)
		}
		return nil
	})
	if after, err := m.Count(); err != nil || after != before {
		t.Fatalf("ipcache holds %d entries during the outage (err %v), want %d", after, err, before)
	}
	if err := hasIPCache(m, host(ip1), 70001, netip.Addr{}); err != nil {
		t.Fatalf("during the outage: %v", err)
	}

	own.Resume()
	ip2 := netip.MustParseAddr("10.201.0.2")
	putEndpoint(t, client, keys, ipcache.Entry{IP: ip2, Identity: 70002, Node: "elsewhere"})
	ta.waitOK(t)
	eventually(t, 15*time.Second, "entry written after the outage installed", func() error {
		return hasIPCache(m, host(ip2), 70002, netip.Addr{})
	})
}

// TestAgentMapFull gives the ipcache room for fewer entries than etcd
// holds: the agent reports the full map, installs what fits, and recovers
// when entries go away. The message names the flag an operator raises,
// not a Go field.
func TestAgentMapFull(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(t)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.BPF.IPCacheMax = 16
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	var ips []netip.Addr
	for i := range 30 {
		ip := netip.AddrFrom4([4]byte{10, 202, 0, byte(i + 1)})
		ips = append(ips, ip)
		putEndpoint(t, client, keys, ipcache.Entry{IP: ip, Identity: 70000, Node: "elsewhere"})
	}
	eventually(t, 10*time.Second, "full map reported", func() error {
		st := ta.a.Status()
		if st.State != "degraded" {
			return fmt.Errorf("state %s", st.State)
		}
		for _, ms := range st.Maps {
			if ms.Name == "ipcache" && ms.Pending > 0 && strings.Contains(ms.LastError, "full") {
				if !strings.Contains(ms.LastError, "raise --bpf-ipcache-max") || strings.Contains(ms.LastError, "Config.") {
					return fmt.Errorf("map full message %q does not name --bpf-ipcache-max", ms.LastError)
				}
				return nil
			}
		}
		return fmt.Errorf("no full ipcache in %v", st.Reasons)
	})
	m := ipcacheOf(t, cfg.Node)
	if n, err := m.Count(); err != nil || n != 16 {
		t.Errorf("ipcache holds %d entries (err %v), want 16", n, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, ip := range ips[:20] {
		if err := client.Delete(ctx, keys.Endpoint(ip.String())); err != nil {
			t.Fatal(err)
		}
	}
	ta.waitOK(t)
}

// TestAgentMountsBPFFS: an agent whose --bpffs has no bpffs mounts one
// there, as Cilium's agent does, instead of failing with "no bpffs".
func TestAgentMountsBPFFS(t *testing.T) {
	t.Parallel()
	bpftest.Require(t)
	cluster := etcdtest.Cluster(t)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone
	cfg.BPF.Dir = filepath.Join(t.TempDir(), "bpffs")
	t.Cleanup(func() {
		for unix.Unmount(cfg.BPF.Dir, unix.MNT_DETACH) == nil {
		}
	})
	ta := startAgent(t, cfg) // stopped before the unmount: cleanups run last in, first out
	ta.waitOK(t)
	var st unix.Statfs_t
	if err := unix.Statfs(cfg.BPF.Dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("%s is not a bpffs after the agent started (%v)", cfg.BPF.Dir, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.BPF.Dir, "meshplane", cfg.Node, bpf.IPCacheMapName)); err != nil {
		t.Fatalf("the agent's maps are not pinned on the new bpffs: %v", err)
	}
}
