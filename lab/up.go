package lab

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
)

// Defaults of Options' zero values.
const (
	// DefaultRunDir is the parent of every lab's run directory.
	DefaultRunDir = "/run/meshplane-lab"
	// DefaultBPFFS is the bpffs mount; a lab's pins go under
	// <BPFFS>/mp-<lab>/<cluster>/meshplane/<node>/.
	DefaultBPFFS = bpf.DefaultDir
)

// agentStateOK is nodeagent.StateOK, the state an agent's API reports once
// it works; the lab runs agents as processes and does not import nodeagent.
const agentStateOK = "ok"

// How long the lab waits for its processes. Every wait also ends with its
// ctx.
const (
	readyTimeout = 90 * time.Second // an agent or an etcd becoming ready
	syncTimeout  = 30 * time.Second // agents seeing a pod or a service change
	stopGrace    = 10 * time.Second // SIGTERM to SIGKILL
	pollInterval = 50 * time.Millisecond
)

// maxSocketPath is the longest path a unix socket may have (sun_path,
// less the terminating NUL).
const maxSocketPath = 107

// Options configures where a lab lives and what it runs.
type Options struct {
	// RunDir is the parent of the labs' run directories (state file, etcd
	// data, agent state, sockets, logs): RunDir/<lab>. Zero means
	// DefaultRunDir.
	RunDir string
	// BPFFS is the bpffs mount under which the lab's agents pin their
	// maps, in a directory of the lab's own. Zero means DefaultBPFFS.
	BPFFS string
	// Meshctl is the meshctl binary, which runs the lab's helpers (lab
	// nsexec, lab etcd, lab echo). Zero means the running executable.
	Meshctl string
	// Agent is the mesh-agent binary. Zero means mesh-agent beside
	// Meshctl.
	Agent string
	// ControlPlane is the mesh-controlplane binary, which clusters with
	// kubernetes: true run. Zero means mesh-controlplane beside Meshctl.
	ControlPlane string
	// KubeAPIServer is the kube-apiserver binary of clusters with
	// kubernetes: true. Zero means the one `make kube-apiserver` builds
	// ($MESHPLANE_KUBE_APISERVER, else the cache; kubeapiserver.Find).
	KubeAPIServer string
	// AgentFlags are extra mesh-agent flags for every agent of a lab made
	// by Up ("--log-level=debug", "--datapath=none" for a comparison).
	// They come after the lab's own, so they win.
	AgentFlags []string
	// Stdout receives progress lines. Nil discards them.
	Stdout io.Writer
}

func (o Options) withDefaults() (Options, error) {
	if o.RunDir == "" {
		o.RunDir = DefaultRunDir
	}
	if o.BPFFS == "" {
		o.BPFFS = DefaultBPFFS
	}
	var err error
	if o.RunDir, err = filepath.Abs(o.RunDir); err != nil {
		return o, fmt.Errorf("run dir: %w", err)
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	return o, nil
}

// binaries fills in and checks Meshctl and Agent.
func (o *Options) binaries() error {
	if o.Meshctl == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find meshctl: %w; set Options.Meshctl", err)
		}
		o.Meshctl = exe
	}
	if o.Agent == "" {
		o.Agent = filepath.Join(filepath.Dir(o.Meshctl), "mesh-agent")
	}
	for _, b := range []*string{&o.Meshctl, &o.Agent} {
		abs, err := filepath.Abs(*b)
		if err != nil {
			return err
		}
		*b = abs
		if err := unix.Access(abs, unix.X_OK); err != nil {
			return fmt.Errorf("%s is not an executable (%w): build it (make build) or name it", abs, err)
		}
	}
	return nil
}

// Lab is a running lab. Its methods are safe for concurrent use; changes
// (AddPod, DeletePod, StopAgent, StartAgent) run one at a time. A Lab
// holds no resources of its own: dropping it leaves the lab running, and
// Down removes it. Several processes may open one lab, but only one should
// change it at a time: each keeps the state file as it last wrote it.
type Lab struct {
	o Options

	opMu sync.Mutex // serialises changes

	mu sync.Mutex // guards st
	st *state
}

// Up builds the lab t describes and returns once everything is ready:
// every agent ok, every pod with its address, identity and echo server,
// every service in etcd and in every agent's maps. The lab keeps running
// after Up returns (and after the process that called it exits) until
// Down. On error, Up removes whatever it made.
func Up(ctx context.Context, t *Topology, o Options) (_ *Lab, err error) {
	if t == nil {
		return nil, fmt.Errorf("%w: no topology", ErrTopology)
	}
	topo, err := cloneTopology(t)
	if err != nil {
		return nil, err
	}
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	if o, err = o.withDefaults(); err != nil {
		return nil, err
	}
	if err := o.binaries(); err != nil {
		return nil, err
	}
	if slices.ContainsFunc(topo.Clusters, func(c Cluster) bool { return c.Kubernetes }) {
		if err := o.kubeBinaries(); err != nil {
			return nil, err
		}
	}
	if err := checkHost(o); err != nil {
		return nil, err
	}
	dir := filepath.Join(o.RunDir, topo.Name)
	if n := len(socketPath(dir, "a", "x", "y")); n > maxSocketPath {
		return nil, fmt.Errorf("run dir %s is too long for the lab's unix sockets (%d > %d bytes): use a shorter RunDir or lab name", dir, n, maxSocketPath)
	}
	if err := checkFree(topo.Name, dir); err != nil {
		return nil, err
	}
	if err := checkExternalEtcds(ctx, topo); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	// Claim the name: of two Ups of one lab, one gets the directory and
	// the other fails here, before it could tear down the first one's lab.
	if err := os.Mkdir(dir, 0o755); errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("lab %s: %w (%s): remove it first with: meshctl lab down %s", topo.Name, ErrExists, dir, topo.Name)
	} else if err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	l := &Lab{o: o, st: &state{
		Name: topo.Name, Dir: dir, BPFFS: filepath.Join(o.BPFFS, "mp-"+topo.Name),
		Meshctl: o.Meshctl, Agent: o.Agent, ControlPlane: o.ControlPlane, KubeAPIServer: o.KubeAPIServer,
		Topology: *topo,
	}}
	defer func() {
		if err != nil {
			l.progress("lab %s failed: %v; removing it", topo.Name, err)
			err = errors.Join(err, Down(context.WithoutCancel(ctx), topo.Name, o))
		}
	}()
	if err := l.save(); err != nil {
		return nil, err
	}
	if err := l.up(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Lab) up(ctx context.Context) error {
	st := l.st
	if err := os.MkdirAll(st.BPFFS, 0o700); err != nil {
		return fmt.Errorf("bpffs dir: %w", err)
	}
	segs := st.Topology.segments()
	var bridges []string
	for _, sn := range st.Topology.Subnets {
		bridges = append(bridges, segs[sn.Name].bridge)
	}
	l.progress("lab %s: bridges %s in netns %s", st.Name, strings.Join(append([]string{bridgeName}, bridges...), ", "), labNetnsName(st.Name))
	labNs, err := setupLabNetns(st.Name, bridges...)
	st.LabNetns = labNs
	if err != nil {
		return err
	}
	if len(st.Topology.Subnets) > 0 {
		order := []segment{segs[""]}
		for _, sn := range st.Topology.Subnets {
			order = append(order, segs[sn.Name])
		}
		l.progress("lab %s: router in netns %s", st.Name, routerNetnsName(st.Name))
		if _, err := setupRouter(labNs, st.Name, order); err != nil {
			return fmt.Errorf("router: %w", err)
		}
	}
	for _, c := range st.Topology.Clusters {
		if err := l.startEtcd(ctx, c); err != nil {
			return err
		}
		cs, _ := st.cluster(c.Name)
		if c.Kubernetes {
			if err := l.startKube(ctx, c, cs); err != nil {
				return err
			}
		}
		for _, n := range c.Nodes {
			if err := l.startNode(ctx, c, cs, n, segs[n.Subnet]); err != nil {
				return err
			}
		}
	}
	for _, c := range st.Clusters {
		for _, n := range c.Nodes {
			if err := l.waitAgent(ctx, n); err != nil {
				return err
			}
		}
		if c.Kube != nil {
			// Namespaces and services first, and a control plane that
			// has written them: then it leads, and pods follow.
			if err := l.syncCluster(ctx, c.Name); err != nil {
				return err
			}
			if err := l.waitKubeSynced(ctx, c.Name); err != nil {
				return err
			}
		}
	}
	// Externals come after the agents: their routes need every node's pod
	// CIDR.
	for _, x := range st.Topology.Externals {
		if err := l.addExternal(ctx, x, segs[""]); err != nil {
			return fmt.Errorf("external %s: %w", x.Name, err)
		}
	}
	for _, c := range st.Topology.Clusters {
		for _, n := range c.Nodes {
			ns, _ := st.node(c.Name, n.Name)
			for _, p := range n.Pods {
				if _, err := l.addPod(ctx, &c, ns, p); err != nil {
					return fmt.Errorf("pod %s/%s/%s: %w", c.Name, p.Namespace, p.Name, err)
				}
			}
		}
		if err := l.syncCluster(ctx, c.Name); err != nil {
			return err
		}
	}
	for _, c := range st.Clusters {
		if err := l.waitSynced(ctx, c.Name, nil); err != nil {
			return err
		}
	}
	l.mu.Lock()
	st.Ready = true
	l.mu.Unlock()
	l.progress("lab %s is up", st.Name)
	return l.save()
}

// checkHost checks what Up needs of the machine before it makes anything
// of the lab, and sets up what it can: a bpffs at o.BPFFS, mounted as the
// agent would. What it cannot do it says plainly.
func checkHost(o Options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: the lab needs root (network namespaces, eBPF): run it with sudo", os.ErrPermission)
	}
	if _, err := bpf.MountFS(o.BPFFS); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// checkExternalEtcds connects to every cluster's external etcd, from here,
// before anything is made: one that refuses, or does not answer within a
// few seconds, fails Up at once, naming it. Otherwise the failure would
// show only as the lab's etcd proxy never getting ready (readyTimeout).
func checkExternalEtcds(ctx context.Context, topo *Topology) error {
	for _, c := range topo.Clusters {
		if c.Etcd == nil {
			continue
		}
		client, err := kvstore.New(ctx, kvstore.Config{Endpoints: c.Etcd.Endpoints, DialTimeout: 5 * time.Second})
		if err != nil {
			return fmt.Errorf("cluster %s: external etcd: %w", c.Name, err)
		}
		if err := client.Close(); err != nil {
			return fmt.Errorf("cluster %s: external etcd: %w", c.Name, err)
		}
	}
	return nil
}

// checkFree fails if anything of a lab of this name exists.
func checkFree(name, dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return fmt.Errorf("lab %s: %w (%s): remove it first with: meshctl lab down %s", name, ErrExists, dir, name)
	}
	left, err := listLabNetns(name)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("lab %s: %w: network namespaces %s... are left over: remove them with: meshctl lab down %s", name, ErrExists, left[0], name)
	}
	return nil
}

func cloneTopology(t *Topology) (*Topology, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTopology, err)
	}
	var out Topology
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTopology, err)
	}
	return &out, nil
}

func (l *Lab) progress(format string, args ...any) {
	fmt.Fprintf(l.o.Stdout, format+"\n", args...)
}

func (l *Lab) save() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.save()
}

// socketPath is a short path for a unix socket: the names in a topology
// may be long, sun_path is not.
func socketPath(dir, kind string, parts ...string) string {
	return filepath.Join(dir, "sock", kind+"-"+shortHash(8, parts...)+".sock")
}

func (l *Lab) clusterDir(cluster string) string {
	return filepath.Join(l.st.Dir, "clusters", cluster)
}

// startEtcd starts the cluster's etcd helper and creates the cluster's
// IPAM pool, before any agent starts (so no agent makes the default one).
func (l *Lab) startEtcd(ctx context.Context, c Cluster) error {
	dir := l.clusterDir(c.Name)
	cs := &clusterState{
		Name:       c.Name,
		EtcdSocket: socketPath(l.st.Dir, "e", c.Name),
		EtcdLog:    filepath.Join(dir, "etcd.log"),
	}
	if err := os.MkdirAll(filepath.Dir(cs.EtcdSocket), 0o755); err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	cs.EtcdArgs = []string{l.st.Meshctl, "lab", "etcd", "--dir=" + filepath.Join(dir, "etcd"), "--socket=" + cs.EtcdSocket}
	if c.Etcd != nil {
		cs.Upstream = slices.Clone(c.Etcd.Endpoints)
		cs.EtcdArgs = append(cs.EtcdArgs, "--upstream="+joinComma(cs.Upstream))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cluster dir: %w", err)
	}
	if err := writeGossipKey(filepath.Join(dir, "gossip.key")); err != nil {
		return err
	}
	l.progress("cluster %s: etcd (%s)", c.Name, etcdWhat(cs))
	pid, err := spawn(cs.EtcdArgs, cs.EtcdLog)
	if err != nil {
		return fmt.Errorf("cluster %s: etcd: %w", c.Name, err)
	}
	cs.EtcdPID = pid
	l.mu.Lock()
	l.st.Clusters = append(l.st.Clusters, cs)
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return err
	}
	client, err := l.waitEtcd(ctx, cs)
	if err != nil {
		return err
	}
	defer func() { _ = client.Close() }()
	keys, err := kvstore.NewKeys(c.Name)
	if err != nil {
		return err
	}
	if cs.Upstream != nil {
		// The lab owns the cluster's keys in an external etcd: Down
		// deletes them. So it must not take over a cluster that is there.
		kvs, _, err := client.List(ctx, keys.Prefix())
		if err != nil {
			return fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		if len(kvs) > 0 {
			return fmt.Errorf("cluster %s: etcd at %s holds keys under %s already (%s): pick another cluster name, or delete them", c.Name, joinComma(cs.Upstream), keys.Prefix(), kvs[0].Key)
		}
		l.mu.Lock()
		cs.OwnsKeys = true
		l.mu.Unlock()
		if err := l.save(); err != nil {
			return err
		}
	}
	// The cluster record first, as meshctl ipam pool add writes it: the
	// agents and the control plane compare their --cluster-id with it.
	if _, _, err := kvstore.EnsureCluster(ctx, client, keys, c.ID); err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	pools, err := nodecidr.NewPools(client, c.Name)
	if err != nil {
		return err
	}
	pool, err := c.pool()
	if err != nil {
		return err
	}
	if err := pools.Add(ctx, pool); err != nil {
		return fmt.Errorf("cluster %s: IPAM pool: %w", c.Name, err)
	}
	return nil
}

func etcdWhat(cs *clusterState) string {
	if cs.Upstream != nil {
		return "external, " + joinComma(cs.Upstream)
	}
	return "embedded"
}

func joinComma(s []string) string { return strings.Join(s, ",") }

func writeGossipKey(path string) error {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return fmt.Errorf("gossip key: %w", err)
	}
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key[:])+"\n"), 0o600); err != nil {
		return fmt.Errorf("gossip key: %w", err)
	}
	return nil
}

// etcdConfig is how the lab and its agents reach a cluster's etcd.
func etcdConfig(cs *clusterState) kvstore.Config {
	return kvstore.Config{Endpoints: []string{"unix://" + cs.EtcdSocket}, DialTimeout: 2 * time.Second}
}

// waitEtcd waits until the cluster's etcd answers through its socket.
func (l *Lab) waitEtcd(ctx context.Context, cs *clusterState) (*kvstore.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		if exited(cs.EtcdPID) {
			return nil, fmt.Errorf("cluster %s: etcd exited; its log (%s) ends:\n%s", cs.Name, cs.EtcdLog, logTail(cs.EtcdLog, 10))
		}
		if _, err := os.Stat(cs.EtcdSocket); err == nil {
			c, err := kvstore.New(ctx, etcdConfig(cs))
			if err == nil {
				return c, nil
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster %s: etcd not ready after %s: %w; see %s", cs.Name, readyTimeout, errors.Join(ctx.Err(), last), cs.EtcdLog)
		case <-time.After(pollInterval):
		}
	}
}

// startNode creates a node's namespace, joins it to its segment's bridge
// and starts its agent inside it.
func (l *Lab) startNode(ctx context.Context, c Cluster, cs *clusterState, n NodeSpec, sg segment) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ip := netip.MustParseAddr(n.IP) // validated
	name := nodeNetnsName(l.st.Name, c.Name, n.Name)
	dir := filepath.Join(l.clusterDir(c.Name), "nodes", n.Name)
	ns := &nodeState{
		Node: Node{
			Cluster: c.Name, Name: n.Name, Subnet: n.Subnet, IP: ip, Netns: netnsPath(name),
			AgentSocket: socketPath(l.st.Dir, "a", c.Name, n.Name),
		},
		AgentLog: filepath.Join(dir, "agent.log"),
	}
	l.mu.Lock()
	cs.Nodes = append(cs.Nodes, ns)
	l.mu.Unlock()
	where := ip.String()
	if n.Subnet != "" {
		where += " (subnet " + n.Subnet + ")"
	}
	l.progress("node %s/%s: netns %s, %s, %s routing", c.Name, n.Name, name, where, l.st.Topology.Routing)
	if _, err := setupNodeNetns(l.st.LabNetns, name, bridgePortName(c.Name, n.Name), sg, ip, true); err != nil {
		return fmt.Errorf("node %s/%s: %w", c.Name, n.Name, err)
	}
	bpffs := filepath.Join(l.st.BPFFS, c.Name)
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		return fmt.Errorf("bpffs dir: %w", err)
	}
	ns.AgentArgs = []string{
		l.st.Meshctl, "lab", "nsexec", "--netns=" + ns.Netns, "--",
		l.st.Agent,
		"--node-name=" + n.Name,
		"--cluster-name=" + c.Name,
		"--cluster-id=" + strconv.Itoa(c.ID),
		"--etcd-endpoints=unix://" + cs.EtcdSocket,
		"--state-dir=" + filepath.Join(dir, "state"),
		"--bpffs=" + bpffs,
		"--node-ip=" + ip.String(),
		"--gossip-key-file=" + filepath.Join(l.clusterDir(c.Name), "gossip.key"),
		"--api-socket=" + ns.AgentSocket,
		"--metrics-address=",
		"--no-default-pool",
		"--routing-mode=" + l.st.Topology.Routing,
	}
	ns.AgentArgs = append(ns.AgentArgs, l.o.AgentFlags...)
	return l.spawnAgent(ns)
}

func (l *Lab) spawnAgent(ns *nodeState) error {
	pid, err := spawn(ns.AgentArgs, ns.AgentLog)
	if err != nil {
		return fmt.Errorf("node %s/%s: agent: %w", ns.Cluster, ns.Name, err)
	}
	l.mu.Lock()
	ns.AgentPID = pid
	l.mu.Unlock()
	return l.save()
}

// waitAgent waits until a node's agent is ok, and records its pod CIDR.
func (l *Lab) waitAgent(ctx context.Context, ns *nodeState) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client, closeFn, err := dialAgent(ns.AgentSocket)
	if err != nil {
		return err
	}
	defer closeFn()
	var last string
	for {
		if exited(ns.AgentPID) {
			return fmt.Errorf("node %s/%s: the agent exited; its log (%s) ends:\n%s", ns.Cluster, ns.Name, ns.AgentLog, logTail(ns.AgentLog, 10))
		}
		if _, err := os.Stat(ns.AgentSocket); err == nil {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			st, err := client.Status(cctx, &api.StatusRequest{})
			ccancel()
			switch {
			case err != nil:
				last = err.Error()
			case st.State == agentStateOK && st.Ipam != nil && len(st.Ipam.PodCidrs) > 0:
				cidr, err := firstIPv4Prefix(st.Ipam.PodCidrs)
				if err != nil {
					return fmt.Errorf("node %s/%s: %w", ns.Cluster, ns.Name, err)
				}
				if ns.PodCIDR.IsValid() && ns.PodCIDR != cidr {
					return fmt.Errorf("node %s/%s: the agent claimed pod CIDR %s, but the node had %s: its routes are wrong now", ns.Cluster, ns.Name, cidr, ns.PodCIDR)
				}
				l.mu.Lock()
				ns.PodCIDR = cidr
				l.mu.Unlock()
				l.progress("node %s/%s: agent ok, pod CIDR %s", ns.Cluster, ns.Name, cidr)
				return l.save()
			default:
				last = fmt.Sprintf("%s: %v", st.State, st.Reasons)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s/%s: agent not ready after %s (last: %s); see %s", ns.Cluster, ns.Name, readyTimeout, last, ns.AgentLog)
		case <-time.After(pollInterval):
		}
	}
}

func firstIPv4Prefix(ss []string) (netip.Prefix, error) {
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("the agent has no IPv4 pod CIDR (%v)", ss)
}

func firstIPv4(ss []string) (netip.Addr, error) {
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no IPv4 address in %v", ss)
}

// addExternal makes an external host: a namespace on the lab's bridge
// (no router), a route to the pod CIDR of every node on the lab's network
// through that node (routeExternal says why), and its echo server. It is
// recorded in the state first, so Down finds whatever a failure left.
func (l *Lab) addExternal(ctx context.Context, x ExternalSpec, sg segment) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ip := netip.MustParseAddr(x.IP) // validated
	name := externalNetnsName(l.st.Name, x.Name)
	dir := filepath.Join(l.st.Dir, "externals")
	xs := &externalState{
		External:  External{Name: x.Name, IP: ip, Netns: netnsPath(name), Ports: x.Ports},
		EchoLog:   filepath.Join(dir, x.Name+".log"),
		EchoReady: filepath.Join(dir, x.Name+".ready"),
	}
	l.mu.Lock()
	l.st.Externals = append(l.st.Externals, xs)
	nodes := l.nodesLocked()
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return err
	}
	l.progress("external %s: netns %s, %s", x.Name, name, ip)
	if _, err := setupNodeNetns(l.st.LabNetns, name, externalPortName(x.Name), sg, ip, false); err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Subnet != "" {
			continue
		}
		if err := routeExternal(xs.Netns, n.PodCIDR, n.IP); err != nil {
			return err
		}
	}
	return l.startEcho(ctx, xs.Netns, xs.Ref(), xs.Ports, xs.EchoLog, xs.EchoReady, func(pid int) { xs.EchoPID = pid })
}

// nodesLocked returns every node of the lab.
func (l *Lab) nodesLocked() []Node {
	var out []Node
	for _, c := range l.st.Clusters {
		for _, n := range c.Nodes {
			out = append(out, n.Node)
		}
	}
	return out
}

// dialAgent connects to an agent's API socket. The connection is made per
// call: an agent that restarts gets a new socket, and a cached
// connection would sit in reconnect backoff.
func dialAgent(socket string) (api.AgentClient, func(), error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("agent API %s: %w", socket, err)
	}
	return api.NewAgentClient(conn), func() { _ = conn.Close() }, nil
}

// Open returns the lab called name from its state file.
func Open(name string, o Options) (*Lab, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(o.RunDir, name)
	st, err := loadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab %s: %w (no %s): start it with meshctl lab up", name, ErrNotFound, filepath.Join(dir, stateFile))
	}
	if err != nil {
		return nil, err
	}
	if !st.Ready {
		return nil, fmt.Errorf("lab %s is not ready: its start did not finish; remove it with: meshctl lab down %s", name, name)
	}
	o.Meshctl, o.Agent, o.ControlPlane, o.KubeAPIServer = st.Meshctl, st.Agent, st.ControlPlane, st.KubeAPIServer
	return &Lab{o: o, st: st}, nil
}

// List returns the names of the labs with a run directory under o.RunDir.
func List(o Options) ([]string, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(o.RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && labNameRE.MatchString(e.Name()) && len(e.Name()) <= maxLabName {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Name returns the lab's name.
func (l *Lab) Name() string { return l.st.Name }

// Dir returns the lab's run directory (logs are under it).
func (l *Lab) Dir() string { return l.st.Dir }

// Pods returns the lab's pods, in the order they were made.
func (l *Lab) Pods() []Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Pod, 0, len(l.st.Pods))
	for _, p := range l.st.Pods {
		if p.IP.IsValid() {
			out = append(out, p.Pod)
		}
	}
	return out
}

// Pod returns a pod by reference: "cluster/namespace/name",
// "namespace/name" or "name" (the shorter forms when they are unique).
func (l *Lab) Pod(ref string) (Pod, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, err := l.st.findPod(ref)
	if err != nil {
		return Pod{}, err
	}
	return p.Pod, nil
}

// Nodes returns the lab's nodes.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nodesLocked()
}

// AgentPID returns the PID of a node's agent (0 while it is stopped), for
// a look at its resources in /proc.
func (l *Lab) AgentPID(cluster, node string) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.st.node(cluster, node)
	if err != nil {
		return 0, err
	}
	return n.AgentPID, nil
}

// Externals returns the lab's external hosts.
func (l *Lab) Externals() []External {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]External, 0, len(l.st.Externals))
	for _, x := range l.st.Externals {
		out = append(out, x.External)
	}
	return out
}

// External returns an external host by name ("ext:" in front or not).
func (l *Lab) External(name string) (External, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	x, ok := l.st.findExternal(name)
	if !ok {
		return External{}, fmt.Errorf("%w: no external %q in lab %s", ErrNotFound, name, l.st.Name)
	}
	return x.External, nil
}

// BPFFS returns the bpffs directory the cluster's agents pin under (their
// --bpffs): a node's maps are in bpf.Config{Dir: BPFFS(cluster), Node:
// node}.PinDir().
func (l *Lab) BPFFS(cluster string) string {
	return filepath.Join(l.st.BPFFS, cluster)
}

// Node returns a node of a cluster.
func (l *Lab) Node(cluster, name string) (Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.st.node(cluster, name)
	if err != nil {
		return Node{}, err
	}
	return n.Node, nil
}

// Services returns the lab's services with their current backends.
func (l *Lab) Services() []Service {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.services()
}

// EtcdEndpoints returns the client URLs of a cluster's etcd for
// kvstore.Config (a unix socket, reachable from any namespace), or nil
// for an unknown cluster.
func (l *Lab) EtcdEndpoints(cluster string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.st.cluster(cluster)
	if err != nil {
		return nil
	}
	return etcdConfig(c).Endpoints
}

// Topology returns the lab's topology, with the pods AddPod and DeletePod
// changed.
func (l *Lab) Topology() Topology {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, _ := cloneTopology(&l.st.Topology)
	return *t
}

// StopAgent stops a node's agent (SIGTERM, and waits until it has
// exited). The datapath keeps its maps; pods keep their addresses.
func (l *Lab) StopAgent(ctx context.Context, cluster, node string) error {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	l.mu.Lock()
	ns, err := l.st.node(cluster, node)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if err := stopProc(ctx, ns.AgentPID, l.st.Dir, stopGrace); err != nil {
		return fmt.Errorf("node %s/%s: stop agent: %w", cluster, node, err)
	}
	l.mu.Lock()
	ns.AgentPID = 0
	l.mu.Unlock()
	return l.save()
}

// StartAgent starts a node's agent again, as it was first started plus
// flags (which win, and stay for its later starts: "--datapath-attach=tcx"
// restarts it in the other attachment mode), and waits until it is ok and
// has every pod and service of its cluster in its maps. An agent that runs
// is left alone.
func (l *Lab) StartAgent(ctx context.Context, cluster, node string, flags ...string) error {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	l.mu.Lock()
	ns, err := l.st.node(cluster, node)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if alive(ns.AgentPID, l.st.Dir) {
		return nil
	}
	if len(flags) > 0 {
		l.mu.Lock()
		ns.AgentArgs = append(ns.AgentArgs, flags...)
		l.mu.Unlock()
	}
	if err := l.spawnAgent(ns); err != nil {
		return err
	}
	if err := l.waitAgent(ctx, ns); err != nil {
		return err
	}
	return l.waitSynced(ctx, cluster, nil)
}
