// Package agentcmd reads mesh-agent's configuration from flags, the
// environment and an optional config file, and runs the agent.
//
// Every flag has an environment variable (MESHPLANE_ and the flag's name
// in capitals with '-' as '_': --node-name is MESHPLANE_NODE_NAME) and a
// config file key (the flag's name: "node-name: n1"). A flag beats the
// environment, which beats the file. The --etcd-* flags, their variables
// and the password rules are cmd/internal/etcdflags', shared with meshctl
// and mesh-controlplane. --etcd-endpoints is required: the agent never
// starts an etcd of its own.
package agentcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/cmd/internal/configfile"
	"github.com/meshplane/meshplane/cmd/internal/etcdflags"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/nodeagent"
)

// flags holds the raw flag values; config turns them into a Config.
type flags struct {
	configFile string

	node, cluster      string
	clusterID          int
	etcd               kvstore.Config
	etcdFlags          *etcdflags.Flags
	leaseTTL           time.Duration
	stateDir           string
	bpf                bpf.Config // Dir and the map sizes
	ipBlockSelectsPods bool
	nodeIPs            []string
	nodeLabels         []string
	families           []string
	noDefaultPool      bool
	gossipAddr         string
	gossipPort         int
	gossipKeyFile      string
	gossipInsecure     bool
	gossip             health.Timing
	leaveOnShutdown    bool
	apiSocket          string
	apiSocketGroup     int
	metricsAddr        string
	pruneInterval      time.Duration
	podMetadataWait    time.Duration
	datapath           string
	routingMode        string
	tunnelPort         int
	mtu                int
	logLevel           string
	cleanup            bool // cleanup.go
	cleanupWait        bool
}

func newFlagSet(f *flags, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("mesh-agent", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.configFile, "config", "", "YAML config file: flag names as keys (env MESHPLANE_CONFIG)")
	fs.StringVar(&f.node, "node-name", hostname(), "this node's name, unique in the cluster")
	fs.StringVar(&f.cluster, "cluster-name", "default", "the cluster's name: its key prefix in etcd")
	fs.IntVar(&f.clusterID, "cluster-id", 1, "the cluster's ID in the mesh, 1-255")
	f.etcdFlags = etcdflags.Bind(fs, &f.etcd) // required: --etcd-endpoints
	fs.DurationVar(&f.leaseTTL, "lease-ttl", nodeagent.DefaultLeaseTTL, "TTL of the node's etcd lease (gossip, not the lease, detects dead nodes)")
	fs.StringVar(&f.stateDir, "state-dir", "", "the node's state: pod IPs, endpoints (default /var/lib/meshplane/<node>)")
	fs.StringVar(&f.bpf.Dir, "bpffs", bpf.DefaultDir, "bpffs mount; maps are pinned under <bpffs>/meshplane/<node>/")
	fs.IntVar(&f.bpf.IPCacheMax, "bpf-ipcache-max", 0, fmt.Sprintf("ipcache map size (0: %d)", bpf.DefaultIPCacheMax))
	fs.IntVar(&f.bpf.EndpointsMax, "bpf-endpoints-max", 0, fmt.Sprintf("endpoints map size (0: %d)", bpf.DefaultEndpointsMax))
	fs.IntVar(&f.bpf.PolicyMax, "bpf-policy-max", 0, fmt.Sprintf("policy map size (0: %d)", bpf.DefaultPolicyMax))
	fs.IntVar(&f.bpf.ServicesMax, "bpf-services-max", 0, fmt.Sprintf("services map size (0: %d)", bpf.DefaultServicesMax))
	fs.IntVar(&f.bpf.BackendsMax, "bpf-backends-max", 0, fmt.Sprintf("backends map size (0: %d)", bpf.DefaultBackendsMax))
	fs.IntVar(&f.bpf.CIDRMax, "bpf-cidr-max", 0, fmt.Sprintf("CIDR map size: distinct prefixes of all policies' ipBlocks (0: %d)", bpf.DefaultCIDRMax))
	fs.BoolVar(&f.ipBlockSelectsPods, "policy-ipblock-selects-pods", true,
		"NetworkPolicy ipBlocks match pod (and node) IPs inside them, as Kubernetes says; false: only addresses outside the cluster, as Cilium does")
	fs.StringSliceVar(&f.nodeIPs, "node-ip", nil, "the node's addresses (required)")
	fs.StringSliceVar(&f.nodeLabels, "node-labels", nil, "node labels, key=value")
	fs.StringSliceVar(&f.families, "pod-cidr-families", []string{"ipv4"}, "pod CIDR families to claim: ipv4, ipv6")
	fs.BoolVar(&f.noDefaultPool, "no-default-pool", false, "do not create the default IPAM pool (10.192.0.0/12, /24 per node) when the cluster has none")
	fs.StringVar(&f.gossipAddr, "gossip-address", "", "IP for gossip (default: the first --node-ip)")
	fs.IntVar(&f.gossipPort, "gossip-port", nodeagent.DefaultGossipPort, "gossip TCP and UDP port")
	fs.StringVar(&f.gossipKeyFile, "gossip-key-file", "", "the cluster's gossip keyring: base64 keys, one per line, first used to send")
	fs.BoolVar(&f.gossipInsecure, "gossip-insecure", false, "gossip without a key (labs only: anyone who reaches the port can join)")
	fs.DurationVar(&f.gossip.ProbeInterval, "gossip-probe-interval", health.DefaultProbeInterval, "how often gossip probes another node")
	fs.DurationVar(&f.gossip.ProbeTimeout, "gossip-probe-timeout", health.DefaultProbeTimeout, "how long a direct probe waits before asking other nodes to probe too; less than --gossip-probe-interval")
	fs.DurationVar(&f.gossip.GossipInterval, "gossip-interval", health.DefaultGossipInterval, "how often gossip sends queued messages to random nodes")
	fs.IntVar(&f.gossip.SuspicionMult, "gossip-suspicion-mult", health.DefaultSuspicionMult, "a suspect that does not refute within mult × max(1, log10(nodes)) × probe interval is declared dead (longer without confirmations)")
	fs.IntVar(&f.gossip.SuspicionMaxTimeoutMult, "gossip-suspicion-max-mult", health.DefaultSuspicionMaxTimeoutMult, "how much longer a suspicion nobody confirms may last, as a multiple of the shortest (Lifeguard)")
	fs.IntVar(&f.gossip.AwarenessMaxMultiplier, "gossip-awareness-max-mult", health.DefaultAwarenessMaxMultiplier, "how far a node that finds itself slow stretches its probes' deadlines, as a multiple of the probe interval (Lifeguard; 1: never)")
	fs.DurationVar(&f.gossip.CheckTimeout, "gossip-check-timeout", health.DefaultCheckTimeout, "how long the direct TCP check of a node gossip declared dead waits for the node's answer")
	fs.DurationVar(&f.gossip.RestartGrace, "gossip-restart-grace", health.DefaultRestartGrace, "how long a node that announced a restart keeps its routes and backends on the other nodes")
	fs.BoolVar(&f.leaveOnShutdown, "leave-on-shutdown", false, "on SIGTERM, leave the cluster for good (the other nodes remove this node's routes and backends at once) instead of announcing a restart")
	fs.StringVar(&f.apiSocket, "api-socket", nodeagent.DefaultAPISocket, "unix socket of the agent's gRPC API")
	fs.IntVar(&f.apiSocketGroup, "api-socket-group", -1, "group ID allowed to use the API socket (mode 0660); -1: only the agent's user (0600)")
	fs.StringVar(&f.metricsAddr, "metrics-address", "127.0.0.1:9962", "host:port of the Prometheus endpoint; empty disables it")
	fs.DurationVar(&f.pruneInterval, "prune-interval", nodeagent.DefaultPruneInterval, "how often each map is compared in full with the desired state")
	fs.DurationVar(&f.podMetadataWait, "pod-metadata-wait", nodeagent.DefaultPodMetadataWait,
		"how long a CNI ADD waits for the pod's labels from the control plane (pods/ and namespaces/ in etcd) before it fails; keep it below mesh-cni's timeout")
	fs.StringVar(&f.datapath, "datapath", nodeagent.DatapathEBPF, "ebpf: attach the TC programs to pods' veths; none: fill the maps only (comparisons, debugging)")
	fs.StringVar((*string)(&f.bpf.Attach), "datapath-attach", string(bpf.AttachTC),
		"how the programs hook pods' veths: tc (clsact qdisc and cls_bpf filters; well under 1 ms an attach) or tcx (pinned tcx links; each attach waits for an RCU grace period under RTNL, about 12 ms, serialized across the node)")
	fs.StringVar(&f.routingMode, "routing-mode", nodeagent.RoutingTunnel, "how pods on other nodes are reached: tunnel (VXLAN from the eBPF datapath; works across subnets), native (routes via the nodes' addresses; they must reach each other directly) or none (something else routes the pod CIDRs)")
	fs.IntVar(&f.tunnelPort, "tunnel-port", nodeagent.DefaultTunnelPort, "UDP port of the VXLAN tunnel (tunnel mode), the same on every node")
	fs.IntVar(&f.mtu, "mtu", 0, "pod MTU the CNI plugin sets (0: the node interface's MTU, less 50 in tunnel mode)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	bindCleanup(fs, f)
	return fs
}

func hostname() string {
	h, _ := os.Hostname()
	return strings.ToLower(h)
}

// Load parses args, then fills flags not given from the environment, then
// from the config file, and returns the agent's Config.
func Load(args []string, stderr io.Writer) (nodeagent.Config, slog.Level, error) {
	l, err := load(args, stderr)
	return l.cfg, l.level, err
}

// loaded is what load returns: the Config, the log level, and warnings
// about the configuration for Main to log once it has a logger.
type loaded struct {
	cfg         nodeagent.Config
	level       slog.Level
	warnings    []etcdflags.Warning
	cleanup     *nodeagent.Config // --cleanup: what to remove (cleanup.go)
	cleanupWait bool
}

func load(args []string, stderr io.Writer) (loaded, error) {
	var f flags
	fs := newFlagSet(&f, stderr)
	if err := fs.Parse(args); err != nil {
		return loaded{}, err
	}
	if fs.NArg() > 0 {
		return loaded{}, fmt.Errorf("unexpected argument %q: mesh-agent takes only flags", fs.Arg(0))
	}
	if err := f.etcdFlags.SetFromEnv(); err != nil {
		return loaded{}, err
	}
	if f.configFile != "" {
		if err := configfile.Apply(fs, f.configFile, "mesh-agent"); err != nil {
			return loaded{}, err
		}
	}
	if f.cleanup {
		return f.cleanupConfig()
	}
	cfg, level, err := f.config()
	if err != nil {
		return loaded{}, err
	}
	warnings := f.etcdFlags.Warnings()
	if w, ok := etcdflags.ReadableByOthers("gossip key file", f.gossipKeyFile); ok {
		warnings = append(warnings, w)
	}
	return loaded{cfg: cfg, level: level, warnings: warnings}, nil
}

func (f *flags) config() (nodeagent.Config, slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nodeagent.Config{}, 0, fmt.Errorf("--log-level %q: use debug, info, warn or error", f.logLevel)
	}
	cfg := nodeagent.Config{
		Node: f.node, Cluster: f.cluster, ClusterID: f.clusterID,
		Etcd:     f.etcd,
		LeaseTTL: f.leaseTTL, StateDir: f.stateDir, BPF: f.bpf,
		GossipPort: f.gossipPort, GossipInsecure: f.gossipInsecure, NoDefaultPool: f.noDefaultPool,
		Gossip: f.gossip, LeaveOnShutdown: f.leaveOnShutdown,
		APISocket: f.apiSocket, APISocketGroup: f.apiSocketGroup, MetricsAddr: f.metricsAddr,
		PruneInterval:      f.pruneInterval,
		PodMetadataWait:    f.podMetadataWait,
		Datapath:           f.datapath,
		RoutingMode:        f.routingMode,
		TunnelPort:         f.tunnelPort,
		MTU:                f.mtu,
		IPBlockOutsideOnly: !f.ipBlockSelectsPods,
	}
	for _, s := range f.nodeIPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return cfg, 0, fmt.Errorf("--node-ip %q: not an IP address", s)
		}
		cfg.NodeIPs = append(cfg.NodeIPs, ip)
	}
	for _, kv := range f.nodeLabels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return cfg, 0, fmt.Errorf("--node-labels %q: write key=value", kv)
		}
		if cfg.NodeLabels == nil {
			cfg.NodeLabels = make(map[string]string)
		}
		cfg.NodeLabels[k] = v
	}
	for _, s := range f.families {
		var fam ipam.Family
		switch strings.ToLower(s) {
		case "ipv4", "4":
			fam = ipam.IPv4
		case "ipv6", "6":
			fam = ipam.IPv6
		default:
			return cfg, 0, fmt.Errorf("--pod-cidr-families %q: use ipv4 and/or ipv6", s)
		}
		cfg.Families = append(cfg.Families, fam)
	}
	if f.gossipAddr != "" {
		ip, err := netip.ParseAddr(f.gossipAddr)
		if err != nil {
			return cfg, 0, fmt.Errorf("--gossip-address %q: not an IP address", f.gossipAddr)
		}
		cfg.GossipAddr = ip
	}
	if cfg.APISocket != "" {
		// Absolute, so the socket is the same file whatever directory the
		// agent runs in, and clients dial it by a full path.
		abs, err := filepath.Abs(cfg.APISocket)
		if err != nil {
			return cfg, 0, fmt.Errorf("--api-socket %q: %w", cfg.APISocket, err)
		}
		cfg.APISocket = abs
	}
	if f.gossipKeyFile != "" {
		keys, err := nodeagent.ReadKeyFile(f.gossipKeyFile)
		if err != nil {
			return cfg, 0, err
		}
		cfg.GossipKeys = keys
	}
	if err := cfg.Validate(); err != nil {
		var te *health.TimingError
		if errors.As(err, &te) {
			return cfg, 0, fmt.Errorf("%w: --%s: %s", nodeagent.ErrConfig, timingFlags[te.Field], te.Msg)
		}
		return cfg, 0, err
	}
	return cfg, level, nil
}

// timingFlags names the flag of each health.Timing field, for errors.
var timingFlags = map[string]string{
	"ProbeInterval":           "gossip-probe-interval",
	"ProbeTimeout":            "gossip-probe-timeout",
	"GossipInterval":          "gossip-interval",
	"SuspicionMult":           "gossip-suspicion-mult",
	"SuspicionMaxTimeoutMult": "gossip-suspicion-max-mult",
	"AwarenessMaxMultiplier":  "gossip-awareness-max-mult",
	"CheckTimeout":            "gossip-check-timeout",
	"RestartGrace":            "gossip-restart-grace",
}

// Main runs mesh-agent with args until ctx ends, logging to stderr, and
// returns the exit code.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	l, err := load(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "mesh-agent:", err)
		return 2
	}
	if l.cleanup != nil {
		return cleanup(ctx, l, stderr)
	}
	cfg := l.cfg
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l.level}))
	for _, w := range l.warnings {
		cfg.Logger.Warn(w.Msg, w.Attrs...)
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "mesh-agent:", err)
		return 2
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "mesh-agent:", err)
		return 1
	}
	return 0
}
