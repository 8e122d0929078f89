package nodeagent

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/labels"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid agent configuration")

// Version is the agent's version, published in the node record and in
// gossip. Release builds set it with -ldflags "-X ...nodeagent.Version=v1.2.3".
var Version = "dev"

// Defaults of Config's zero values.
const (
	DefaultStateDir      = "/var/lib/meshplane"
	DefaultGossipPort    = 7946
	DefaultAPISocket     = "/var/run/meshplane/agent.sock"
	DefaultLeaseTTL      = 5 * time.Minute
	DefaultPruneInterval = time.Minute
)

// Config configures an agent. The zero value of every optional field means
// its documented default; New validates the whole struct.
type Config struct {
	// Node is this node's name, unique in the cluster (a DNS label, as
	// Kubernetes names nodes). Required.
	Node string
	// Cluster is the cluster's name: its key prefix in etcd. Required.
	Cluster string
	// ClusterID is the cluster's ID in the mesh, 1-255. Required. At start
	// the agent compares Cluster and ClusterID with etcd's cluster record
	// (creating it when there is none) and refuses to run when they
	// differ.
	ClusterID int
	// Etcd is the etcd connection (cmd/internal/etcdflags binds it to the
	// --etcd-* flags). Its Endpoints are required: an agent never starts an
	// etcd of its own, so an empty list is a configuration error rather
	// than a private cluster of one.
	Etcd kvstore.Config
	// LeaseTTL is the TTL of the node's etcd lease, which carries the node
	// record and its ipcache entries. etcd is not the failure detector
	// (gossip is), so it is long: a dead node's keys outlive it by up to
	// LeaseTTL. Zero means DefaultLeaseTTL.
	LeaseTTL time.Duration

	// StateDir holds the node's own state: pod IP allocations and local
	// endpoints. Zero means DefaultStateDir/<Node>.
	StateDir string
	// BPF configures the maps: BPF.Dir is the bpffs mount (maps are
	// pinned under <Dir>/meshplane/<Node>/; zero means bpf.DefaultDir),
	// and the sizes (IPCacheMax, ..., CTMax, FlowRingBytes) zero for
	// package bpf's defaults. The agent sets BPF.Node to Node, and
	// BPF.SizeNames, unless given, to mesh-agent's flags (--bpf-policy-max),
	// which a full map's error tells the operator to raise. BPF.Attach is
	// how the programs hook pods' veths (--datapath-attach): bpf.AttachTC
	// (zero means it) or bpf.AttachTCX; an agent restarted with the other
	// mode moves every veth to it (bpf.Datapath.Attach).
	BPF bpf.Config

	// NodeIPs are the node's own addresses: the targets of other nodes'
	// routes to this node's pod CIDRs. Required (at least one).
	NodeIPs []netip.Addr
	// NodeLabels are published in the node record.
	NodeLabels map[string]string
	// Families are the pod CIDR families to claim. Zero means IPv4 only.
	Families []ipam.Family
	// NoDefaultPool stops the agent from creating the default IPAM pool
	// (10.192.0.0/12 with /24 per node, plus fd6d:7368::/48 with /112 when
	// IPv6 is claimed) in a cluster that has no pool at all. Cilium's
	// cluster-pool IPAM likewise works out of the box.
	NoDefaultPool bool

	// GossipAddr is the IP gossip binds to and advertises. Zero means the
	// first of NodeIPs.
	GossipAddr netip.Addr
	// GossipPort is the gossip TCP and UDP port. Zero means
	// DefaultGossipPort; -1 picks a free port (tests).
	GossipPort int
	// GossipKeys is the cluster's gossip keyring (AES-128/192/256 keys;
	// the first is used to send, all are accepted). Required unless
	// GossipInsecure: without keys, anyone who can reach the port can join.
	GossipKeys [][]byte
	// GossipInsecure allows gossip without keys (a test or a lab).
	GossipInsecure bool
	// Gossip is the failure detector's timing (probes, suspicion, the
	// direct check of a node declared dead, the grace of a node that
	// announced a restart); zero fields mean package health's defaults
	// (health/doc.go, "Tuning").
	Gossip health.Timing
	// LeaveOnShutdown makes a graceful shutdown (the end of Run's context,
	// SIGTERM) a departure for good: the other nodes take this node's
	// routes and service backends out at once. Otherwise (the default) the
	// agent announces a restart, and the others keep them for their
	// Gossip.RestartGrace while it is away.
	LeaveOnShutdown bool

	// APISocket is the unix socket of the gRPC API. Zero means
	// DefaultAPISocket.
	APISocket string
	// APISocketGroup, if not -1, is the group that may use the socket
	// (mode 0660); otherwise only the agent's user may (0600). Zero means
	// root's group; the CLI sets -1 unless told.
	APISocketGroup int
	// MetricsAddr is the host:port of the Prometheus endpoint (/metrics).
	// Empty disables it.
	MetricsAddr string

	// PodMetadataWait is how long AddEndpoint waits, for a pod sent
	// without labels (the CNI plugin's request), for the control plane to
	// publish the pod's and its namespace's metadata in etcd; the
	// request's own deadline may end it sooner. Zero means
	// DefaultPodMetadataWait.
	PodMetadataWait time.Duration

	// PruneInterval is how often each map is compared in full against the
	// desired state. Zero means DefaultPruneInterval.
	PruneInterval time.Duration
	// Datapath is DatapathEBPF (load and attach the TC programs; empty
	// means it) or DatapathNone (fill the maps only).
	Datapath string
	// RoutingMode is how pods on other nodes are reached (routing.go,
	// docs/operations.md "Choosing a routing mode"): RoutingTunnel (VXLAN
	// from the eBPF datapath; works across subnets; zero means it),
	// RoutingNative (routes via the other nodes' addresses; the nodes
	// must reach each other directly) or RoutingNone (the agent programs
	// no routes: something else does). Tunnel mode needs DatapathEBPF.
	RoutingMode string
	// TunnelPort is the VXLAN UDP port of tunnel mode, the same on every
	// node. Zero means DefaultTunnelPort (8472, Cilium's).
	TunnelPort int
	// MTU, if not zero, is the pod MTU the CNI plugin sets, overriding
	// the one derived from the underlay (its interface's MTU, less
	// TunnelOverhead in tunnel mode). 576-65535.
	MTU int
	// IPBlockOutsideOnly makes NetworkPolicy ipBlocks match only addresses
	// without an identity of their own (outside the cluster), as Cilium
	// does: a pod (or node) inside an ipBlock is then matched by selectors
	// only. False, the default, is the Kubernetes semantics that the
	// upstream conformance tests check: an ipBlock matches every address
	// inside its cidr and outside its excepts, pods' included, through the
	// CIDR map (docs/datapath.md). The flag is
	// --policy-ipblock-selects-pods=false.
	IPBlockOutsideOnly bool

	// LabelFilter drops labels that do not describe a workload from
	// endpoint label sets. Nil means the default filter.
	LabelFilter *labels.Filter

	// Logger receives the agent's logs. Nil discards them.
	Logger *slog.Logger
}

// Validate checks the configuration without touching the system, and
// fills in defaults.
func (c *Config) Validate() error {
	if err := allocator.ValidateNodeName(c.Node); err != nil {
		return fmt.Errorf("%w: node name: %w", ErrConfig, err)
	}
	if err := kvstore.ValidateClusterName(c.Cluster); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := identity.ValidateClusterID(c.ClusterID); err != nil {
		return fmt.Errorf("%w: cluster ID: %w", ErrConfig, err)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL < 5*time.Second {
		return fmt.Errorf("%w: lease TTL %s is too short: use 5s or more (gossip, not the lease, detects dead nodes)", ErrConfig, c.LeaseTTL)
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Join(DefaultStateDir, c.Node)
	}
	if err := c.Etcd.Validate(); err != nil {
		return err
	}
	if c.BPF.Dir == "" {
		c.BPF.Dir = bpf.DefaultDir
	}
	c.BPF.Node = c.Node
	if c.BPF.SizeNames == (bpf.SizeNames{}) {
		c.BPF.SizeNames = mapSizeFlags
	}
	for _, n := range []int{c.BPF.IPCacheMax, c.BPF.EndpointsMax, c.BPF.PolicyMax, c.BPF.ServicesMax, c.BPF.BackendsMax, c.BPF.CIDRMax, c.BPF.CTMax, c.BPF.FlowRingBytes} {
		if n < 0 {
			return fmt.Errorf("%w: map sizes must not be negative", ErrConfig)
		}
	}
	switch c.BPF.Attach {
	case "":
		c.BPF.Attach = bpf.AttachTC
	case bpf.AttachTC, bpf.AttachTCX:
	default:
		return fmt.Errorf("%w: datapath attach mode %q (--datapath-attach): use %q (clsact and cls_bpf: fast to attach) or %q (tcx links)", ErrConfig, c.BPF.Attach, bpf.AttachTC, bpf.AttachTCX)
	}
	if len(c.NodeIPs) == 0 {
		return fmt.Errorf("%w: no node IP: pass the node's address (--node-ip)", ErrConfig)
	}
	for _, ip := range c.NodeIPs {
		if !ip.IsValid() || ip.IsUnspecified() || ip.Zone() != "" {
			return fmt.Errorf("%w: node IP %q: use a unicast address without zone", ErrConfig, ip)
		}
	}
	if len(c.Families) == 0 {
		c.Families = []ipam.Family{ipam.IPv4}
	}
	if !c.GossipAddr.IsValid() {
		c.GossipAddr = c.NodeIPs[0]
	}
	switch {
	case c.GossipPort == 0:
		c.GossipPort = DefaultGossipPort
	case c.GossipPort == -1:
	case c.GossipPort < 1 || c.GossipPort > 65535:
		return fmt.Errorf("%w: gossip port %d: use 1-65535", ErrConfig, c.GossipPort)
	}
	if len(c.GossipKeys) == 0 && !c.GossipInsecure {
		return fmt.Errorf("%w: no gossip key: pass --gossip-key-file (create one with 'head -c 32 /dev/urandom | base64'), or --gossip-insecure for a lab", ErrConfig)
	}
	if err := c.Gossip.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	for i, k := range c.GossipKeys {
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return fmt.Errorf("%w: gossip key %d is %d bytes: use 16, 24 or 32 random bytes", ErrConfig, i+1, n)
		}
	}
	if c.APISocket == "" {
		c.APISocket = DefaultAPISocket
	}
	if c.PodMetadataWait == 0 {
		c.PodMetadataWait = DefaultPodMetadataWait
	}
	if c.PodMetadataWait < 0 {
		return fmt.Errorf("%w: pod metadata wait %s is negative", ErrConfig, c.PodMetadataWait)
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = DefaultPruneInterval
	}
	if c.PruneInterval < 0 {
		return fmt.Errorf("%w: prune interval must be positive", ErrConfig)
	}
	switch c.Datapath {
	case "":
		c.Datapath = DatapathEBPF
	case DatapathEBPF, DatapathNone:
	default:
		return fmt.Errorf("%w: datapath %q: use %q or %q", ErrConfig, c.Datapath, DatapathEBPF, DatapathNone)
	}
	switch c.RoutingMode {
	case "":
		c.RoutingMode = RoutingTunnel
	case RoutingTunnel, RoutingNative, RoutingNone:
	default:
		return fmt.Errorf("%w: routing mode %q: use %q (VXLAN, works across subnets), %q (the nodes reach each other directly) or %q (something else routes the pod CIDRs)",
			ErrConfig, c.RoutingMode, RoutingTunnel, RoutingNative, RoutingNone)
	}
	if c.RoutingMode == RoutingTunnel && c.Datapath != DatapathEBPF {
		return fmt.Errorf("%w: routing mode %q needs the eBPF datapath, which sets the tunnel's remote end: use datapath %q, or routing mode %q", ErrConfig, RoutingTunnel, DatapathEBPF, RoutingNative)
	}
	switch {
	case c.TunnelPort == 0:
		c.TunnelPort = DefaultTunnelPort
	case c.TunnelPort < 1 || c.TunnelPort > 65535:
		return fmt.Errorf("%w: tunnel port %d: use 1-65535 (the same on every node)", ErrConfig, c.TunnelPort)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return fmt.Errorf("%w: MTU %d: use 576-65535, or 0 to derive it from the node's interface", ErrConfig, c.MTU)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ReadKeyFile reads a gossip keyring file: one base64 key per line (blank
// lines and lines starting with '#' are skipped); the first key is used to
// send, all are accepted, so a key is rotated by adding the new one first
// and removing the old one once every node has it.
func ReadKeyFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: gossip key file: %w", ErrConfig, err)
	}
	var keys [][]byte
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("%w: gossip key file %s line %d: not base64: %w", ErrConfig, path, i+1, err)
		}
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("%w: gossip key file %s line %d: key is %d bytes: use 16, 24 or 32 random bytes (head -c 32 /dev/urandom | base64)", ErrConfig, path, i+1, n)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: gossip key file %s holds no key", ErrConfig, path)
	}
	return keys, nil
}
