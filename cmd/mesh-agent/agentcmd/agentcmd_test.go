package agentcmd

import (
	"encoding/base64"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/nodeagent"
)

// testEtcd is an etcd endpoint for Load, which never connects.
const testEtcd = "http://127.0.0.1:2379"

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadPrecedence checks that a flag beats the environment, which beats
// the config file, and that every source reaches the Config.
func TestLoadPrecedence(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	keyFile := writeFile(t, "keys", "# cluster key\n"+key+"\n")
	file := writeFile(t, "agent.yaml", `
node-name: from-file
cluster-name: from-file
cluster-id: 7
node-ip: [10.0.0.1, "fd00::1"]
node-labels: {zone: a}
gossip-port: 8000
lease-ttl: 1m
gossip-key-file: `+keyFile+`
etcd-endpoints: [http://a:2379, http://b:2379]
etcd-dial-timeout: 3s
etcd-user: from-file
`)
	t.Setenv("MESHPLANE_CLUSTER_NAME", "from-env")
	t.Setenv("MESHPLANE_GOSSIP_PORT", "9000")
	t.Setenv("MESHPLANE_ETCD_USER", "from-env")
	cfg, _, err := Load([]string{"--config", file, "--gossip-port", "9100", "--state-dir", t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node != "from-file" || cfg.Cluster != "from-env" || cfg.GossipPort != 9100 || cfg.ClusterID != 7 {
		t.Errorf("node %q cluster %q port %d id %d; want from-file, from-env, 9100, 7", cfg.Node, cfg.Cluster, cfg.GossipPort, cfg.ClusterID)
	}
	if len(cfg.NodeIPs) != 2 || cfg.NodeIPs[1] != netip.MustParseAddr("fd00::1") || cfg.NodeLabels["zone"] != "a" {
		t.Errorf("node IPs %v labels %v", cfg.NodeIPs, cfg.NodeLabels)
	}
	if cfg.LeaseTTL != time.Minute || len(cfg.GossipKeys) != 1 || len(cfg.GossipKeys[0]) != 32 {
		t.Errorf("lease TTL %s, %d gossip keys", cfg.LeaseTTL, len(cfg.GossipKeys))
	}
	// The etcd flags (cmd/internal/etcdflags) have file keys too.
	if e := cfg.Etcd; !slices.Equal(e.Endpoints, []string{"http://a:2379", "http://b:2379"}) || e.DialTimeout != 3*time.Second || e.Username != "from-env" {
		t.Errorf("etcd endpoints %q, dial timeout %s, user %q; want the file's two, 3s, from-env", e.Endpoints, e.DialTimeout, e.Username)
	}
}

// TestLoadErrors checks that bad input names what is wrong.
func TestLoadErrors(t *testing.T) {
	badKey := writeFile(t, "bad", base64.StdEncoding.EncodeToString([]byte("short"))+"\n")
	tests := []struct {
		name string
		args []string
		file string
		want string
	}{
		{"no node IP", []string{"--node-name", "n1", "--gossip-insecure"}, "", "--node-ip"},
		{"bad node IP", []string{"--node-ip", "10.0.0.300"}, "", `--node-ip "10.0.0.300"`},
		{"no gossip key", []string{"--node-ip", "10.0.0.1", "--node-name", "n1"}, "", "--gossip-key-file"},
		{"short gossip key", []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-key-file", badKey}, "", "5 bytes"},
		{"bad cluster ID", []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure", "--cluster-id", "300"}, "", "cluster ID"},
		{"bad family", []string{"--node-ip", "10.0.0.1", "--pod-cidr-families", "ipv5"}, "", "ipv5"},
		{"unknown file key", []string{"--node-ip", "10.0.0.1"}, "node-nam: x\n", `unknown key "node-nam"`},
		{"bad log level", []string{"--node-ip", "10.0.0.1", "--log-level", "loud"}, "", "--log-level"},
		{"bad routing mode", []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure", "--routing-mode", "bgp"}, "", `routing mode "bgp": use "tunnel"`},
		{"tunnel without the eBPF datapath", []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure", "--datapath", "none"}, "", `routing mode "tunnel" needs the eBPF datapath`},
		{"bad tunnel port", []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure"}, "tunnel-port: 70000\n", "tunnel port 70000"},
		{"bad MTU", []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure", "--mtu", "100"}, "", "MTU 100: use 576-65535"},
		{"bad attach mode", []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure", "--datapath-attach", "xdp"}, "", `attach mode "xdp" (--datapath-attach): use "tc"`},
		{"stray argument", []string{"run"}, "", `unexpected argument "run"`},
	}
	// Without endpoints the agent does not start an etcd of its own: it
	// says what to pass.
	t.Run("no etcd endpoints", func(t *testing.T) {
		_, _, err := Load([]string{"--state-dir", t.TempDir(), "--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure"}, io.Discard)
		if !errors.Is(err, kvstore.ErrConfig) || !strings.Contains(err.Error(), "pass --etcd-endpoints (or MESHPLANE_ETCD_ENDPOINTS)") {
			t.Fatalf("Load() without --etcd-endpoints = %v, want an ErrConfig error saying to pass --etcd-endpoints", err)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd}, tt.args...)
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "c.yaml", tt.file))
			}
			_, _, err := Load(args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load() = %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(tt.name, "gossip") && !errors.Is(err, nodeagent.ErrConfig) {
				t.Errorf("Load() = %v, want it to wrap ErrConfig", err)
			}
		})
	}
}

// TestLoadIPBlockOption checks --policy-ipblock-selects-pods (default true:
// the Kubernetes semantics) from each source, and --bpf-cidr-max.
// TestLoadRouting checks the routing flags and --datapath-attach: their
// defaults (tunnel mode on 8472, a derived MTU, tc) and their config-file
// keys.
func TestLoadRouting(t *testing.T) {
	base := []string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd, "--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure"}
	cfg, _, err := Load(base, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RoutingMode != nodeagent.RoutingTunnel || cfg.TunnelPort != nodeagent.DefaultTunnelPort || cfg.MTU != 0 {
		t.Errorf("defaults: mode %q port %d mtu %d; want tunnel, %d, 0", cfg.RoutingMode, cfg.TunnelPort, cfg.MTU, nodeagent.DefaultTunnelPort)
	}
	if cfg.BPF.Attach != bpf.AttachTC {
		t.Errorf("default attach mode %q, want tc", cfg.BPF.Attach)
	}
	file := writeFile(t, "agent.yaml", "routing-mode: native\ntunnel-port: 4789\nmtu: 9000\ndatapath-attach: tcx\n")
	cfg, _, err = Load(append(base, "--config", file), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RoutingMode != nodeagent.RoutingNative || cfg.TunnelPort != 4789 || cfg.MTU != 9000 || cfg.BPF.Attach != bpf.AttachTCX {
		t.Errorf("from the file: mode %q port %d mtu %d attach %q; want native, 4789, 9000, tcx", cfg.RoutingMode, cfg.TunnelPort, cfg.MTU, cfg.BPF.Attach)
	}
}

func TestLoadIPBlockOption(t *testing.T) {
	base := []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure"}
	for _, tc := range []struct {
		name        string
		args        []string
		env, file   string
		outsideOnly bool
	}{
		{name: "default"},
		{name: "flag", args: []string{"--policy-ipblock-selects-pods=false"}, outsideOnly: true},
		{name: "environment", env: "false", outsideOnly: true},
		{name: "config file", file: "policy-ipblock-selects-pods: false\n", outsideOnly: true},
		{name: "flag beats the file", args: []string{"--policy-ipblock-selects-pods=true"}, file: "policy-ipblock-selects-pods: false\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd, "--bpf-cidr-max", "1000"}, base...), tc.args...)
			if tc.env != "" {
				t.Setenv("MESHPLANE_POLICY_IPBLOCK_SELECTS_PODS", tc.env)
			}
			if tc.file != "" {
				args = append(args, "--config", writeFile(t, "agent.yaml", tc.file))
			}
			cfg, _, err := Load(args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.IPBlockOutsideOnly != tc.outsideOnly || cfg.BPF.CIDRMax != 1000 {
				t.Errorf("IPBlockOutsideOnly = %v, CIDRMax = %d; want %v, 1000", cfg.IPBlockOutsideOnly, cfg.BPF.CIDRMax, tc.outsideOnly)
			}
		})
	}
}

// TestGossipTiming checks the failure detector's flags: their defaults are
// health's, every source reaches the Config, and a bad value is an error
// that names the flag.
func TestGossipTiming(t *testing.T) {
	base := []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure"}
	cfg, _, err := Load(append([]string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd}, base...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := health.Timing{
		ProbeInterval: health.DefaultProbeInterval, ProbeTimeout: health.DefaultProbeTimeout,
		GossipInterval: health.DefaultGossipInterval, SuspicionMult: health.DefaultSuspicionMult,
		SuspicionMaxTimeoutMult: health.DefaultSuspicionMaxTimeoutMult, AwarenessMaxMultiplier: health.DefaultAwarenessMaxMultiplier,
		CheckTimeout: health.DefaultCheckTimeout, RestartGrace: health.DefaultRestartGrace,
	}
	if cfg.Gossip != want || cfg.LeaveOnShutdown {
		t.Errorf("defaults: %+v, leave on shutdown %v; want %+v and false", cfg.Gossip, cfg.LeaveOnShutdown, want)
	}

	file := writeFile(t, "agent.yaml", "gossip-probe-interval: 500ms\ngossip-suspicion-max-mult: 8\n")
	t.Setenv("MESHPLANE_GOSSIP_RESTART_GRACE", "30s")
	cfg, _, err = Load(append([]string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd, "--config", file, "--gossip-check-timeout", "2s", "--leave-on-shutdown"}, base...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if g := cfg.Gossip; g.ProbeInterval != 500*time.Millisecond || g.SuspicionMaxTimeoutMult != 8 || g.RestartGrace != 30*time.Second ||
		g.CheckTimeout != 2*time.Second || !cfg.LeaveOnShutdown {
		t.Errorf("from file, env and flags: %+v, leave on shutdown %v", g, cfg.LeaveOnShutdown)
	}

	for _, tt := range []struct {
		args []string
		want []string // all in the error
	}{
		{[]string{"--gossip-probe-timeout", "400ms"}, []string{"--gossip-probe-timeout", "not shorter than the probe interval 300ms"}},
		{[]string{"--gossip-probe-interval", "100ms"}, []string{"--gossip-probe-timeout", "not shorter"}},
		{[]string{"--gossip-restart-grace", "-1s"}, []string{"--gossip-restart-grace", "negative"}},
		{[]string{"--gossip-check-timeout", "2h"}, []string{"--gossip-check-timeout", "too long"}},
		{[]string{"--gossip-suspicion-mult", "1000"}, []string{"--gossip-suspicion-mult", "1-100"}},
		{[]string{"--gossip-suspicion-max-mult", "-2"}, []string{"--gossip-suspicion-max-mult", "1-100"}},
		{[]string{"--gossip-awareness-max-mult", "101"}, []string{"--gossip-awareness-max-mult", "1-100"}},
		{[]string{"--gossip-probe-interval", "5"}, []string{"--gossip-probe-interval", "missing unit"}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, _, err := Load(append(append([]string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd}, base...), tt.args...), io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load() = %v, want it to say %q", err, w)
				}
			}
		})
	}
}

// TestLoadWarnings: a password on the command line and secret files that
// other users can read earn a warning (the password itself never appears);
// the environment and private files do not.
func TestLoadWarnings(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	private := writeFile(t, "key", key+"\n")
	open := writeFile(t, "open-key", key+"\n")
	pwPrivate := writeFile(t, "pw", "s3cret-pw\n")
	pwOpen := writeFile(t, "open-pw", "s3cret-pw\n")
	for _, f := range []string{open, pwOpen} {
		if err := os.Chmod(f, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := []string{"--node-ip", "10.0.0.1", "--node-name", "n1", "--etcd-endpoints", "http://127.0.0.1:2379", "--etcd-user", "agent"}
	tests := []struct {
		name string
		args []string
		env  string
		want []string // substrings, one per warning; none for no warning
	}{
		{"password flag", []string{"--etcd-password", "s3cret-pw", "--gossip-key-file", private}, "",
			[]string{"--etcd-password on the command line"}},
		{"password from the environment", []string{"--gossip-key-file", private}, "s3cret-pw", nil},
		{"private password file", []string{"--etcd-password-file", pwPrivate, "--gossip-key-file", private}, "", nil},
		{"open password file", []string{"--etcd-password-file", pwOpen, "--gossip-key-file", private}, "",
			[]string{"etcd password file is readable by other users"}},
		{"open gossip key file", []string{"--gossip-key-file", open}, "",
			[]string{"gossip key file is readable by other users"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("MESHPLANE_ETCD_PASSWORD", tt.env)
			}
			l, err := load(append(append([]string{"--state-dir", t.TempDir()}, base...), tt.args...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if len(l.warnings) != len(tt.want) {
				t.Fatalf("warnings %v, want %d", l.warnings, len(tt.want))
			}
			for i, w := range l.warnings {
				msg := w.String()
				if !strings.Contains(msg, tt.want[i]) || strings.Contains(msg, "s3cret-pw") {
					t.Errorf("warning %q, want it to say %q and not the password", msg, tt.want[i])
				}
			}
		})
	}
	if _, err := load(append([]string{"--state-dir", t.TempDir(), "--gossip-insecure", "--etcd-password", "a", "--etcd-password-file", pwPrivate}, base...), io.Discard); err == nil {
		t.Fatal("a password flag and a password file were both accepted")
	}
}

// TestLoadRelativeSocket: a relative --api-socket is made absolute, so
// that it names the same file whatever the agent's working directory.
func TestLoadRelativeSocket(t *testing.T) {
	cfg, _, err := Load([]string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd, "--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure", "--api-socket", "run/agent.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if want := filepath.Join(wd, "run/agent.sock"); cfg.APISocket != want {
		t.Fatalf("APISocket = %q, want %q", cfg.APISocket, want)
	}
}

// TestPodMetadataWait: --pod-metadata-wait (and its config-file key) sets
// how long a CNI ADD waits for the pod's labels; the default is the
// agent's.
func TestPodMetadataWait(t *testing.T) {
	base := []string{"--state-dir", t.TempDir(), "--etcd-endpoints", testEtcd, "--node-ip", "10.0.0.1", "--node-name", "n1", "--gossip-insecure"}
	cfg, _, err := Load(base, io.Discard)
	if err != nil || cfg.PodMetadataWait != nodeagent.DefaultPodMetadataWait {
		t.Fatalf("default: %s, %v; want %s", cfg.PodMetadataWait, err, nodeagent.DefaultPodMetadataWait)
	}
	cfg, _, err = Load(append(base, "--pod-metadata-wait", "5s"), io.Discard)
	if err != nil || cfg.PodMetadataWait != 5*time.Second {
		t.Fatalf("--pod-metadata-wait 5s: %s, %v", cfg.PodMetadataWait, err)
	}
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("pod-metadata-wait: 12s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err = Load(append(base, "--config", file), io.Discard)
	if err != nil || cfg.PodMetadataWait != 12*time.Second {
		t.Fatalf("config file pod-metadata-wait: 12s: %s, %v", cfg.PodMetadataWait, err)
	}
	if _, _, err := Load(append(base, "--pod-metadata-wait", "-1s"), io.Discard); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("--pod-metadata-wait -1s = %v, want an error", err)
	}
}
