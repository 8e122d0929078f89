package cli

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/lab"
	"github.com/meshplane/meshplane/lab/labbench"
)

func newBenchDatapathCmd(o *options) *cobra.Command {
	var (
		cfg                  labbench.Config
		cases                []string
		format               string
		runDir, bpffs        string
		meshctlBin, agentBin string
	)
	var defCases []string
	for _, c := range labbench.DefaultCases {
		defCases = append(defCases, c.String())
	}
	cmd := &cobra.Command{
		Use:   "datapath",
		Short: "Measure the eBPF datapath against iptables, and its tunnel against native routing, in the lab: connections/s and latency under policy rules and services",
		Long: `bench datapath builds labs (docs/lab.md) of one cluster with two nodes on one
L2 segment: a client pod and another pod on node1, a server pod (echo server
on TCP 80) on node2. The agents of the ebpf labs run the eBPF datapath, one
lab per routing mode (--routing: native routes via the node addresses,
tunnel is VXLAN from the datapath); those of the iptables lab run none
(--datapath=none, native routing) with iptables rules instead. It needs
root, a bpffs and, for the iptables lab, iptables.

For each case RULES/SERVICES (--cases), both labs get the same state:

  ebpf      an ingress NetworkPolicy on the server allowing the client on TCP
            80 (by podSelector, or with --allow-by-ipblock by an ipBlock of
            the client's IP: the policy path through the CIDR map), plus
            RULES /32 ipBlocks from 172.16.0.0/12 on TCP 80 that no
            traffic uses; SERVICES ClusterIPs from 10.96.0.1 in etcd, each
            with the server as backend. It waits until the pinned maps hold
            them.
  iptables  in the server node, FORWARD: ESTABLISHED,RELATED ACCEPT, RULES
            never-matching "-s 172.16.x.y/32 -p tcp --dport 80 -j ACCEPT",
            the client's ACCEPT, DROP to the server; in the client node,
            kube-proxy's nat chains: KUBE-SERVICES with one rule per service
            -> KUBE-SVC-n -> KUBE-SEP-n -> DNAT to the server.

Every measurement goes to the ClusterIP of the last service, from inside the
client pod: after a check that the client is answered and the other pod is
denied, conn_per_s (--workers loops of connect, read the echo server's hello,
close, for --duration) and rr_p50_us/rr_p99_us (one connection, --rr-count
ping-pongs of --rr-size bytes). With --rounds N, each row is measured N
times, the enforcers taking turns, and shows the medians. Each ebpf tunnel row
also shows its conn/s and latencies as ratios to the ebpf native row of the
same case (conn_per_s_vs_native_ratio, rr_p50_vs_native_ratio,
rr_p99_vs_native_ratio): the tunnel's cost. Then, on the (first) ebpf lab, --applies times: a
policy selecting the pods of both nodes is put into etcd and timed until
every node's pinned policy map holds it (policy_apply_p50_ms, _p99_ms).

The labs are removed at the end, also on error or interrupt. Results and
how to read them: docs/benchmarks.md.`,
		Example: `  meshctl bench datapath
  meshctl bench datapath --cases 0/1,10000/1 --duration 5s -o json
  meshctl bench datapath --enforcers ebpf --cases 0/1 --rounds 3   # tunnel vs native
  meshctl bench datapath --enforcers iptables --iptables-restore iptables-legacy-restore`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			cfg.Cases = nil
			for _, s := range cases {
				c, err := labbench.ParseCase(s)
				if err != nil {
					return fmt.Errorf("--cases: %w", err)
				}
				cfg.Cases = append(cfg.Cases, c)
			}
			if cfg.Applies == 0 {
				cfg.Applies = -1 // --applies 0: none
			}
			cfg.Lab = lab.Options{RunDir: runDir, BPFFS: bpffs, Meshctl: meshctlBin, Agent: agentBin}
			cfg.Progress = o.stderr
			rep, err := labbench.Run(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("bench datapath: %w", err)
			}
			if format == formatJSON {
				return writeJSON(o.stdout, rep)
			}
			return printDatapathReport(o.stdout, rep)
		},
	}
	fs := cmd.Flags()
	fs.StringSliceVar(&cfg.Enforcers, "enforcers", []string{labbench.EnforcerEBPF, labbench.EnforcerIPTables}, "enforcers to compare: ebpf, iptables")
	fs.StringSliceVar(&cfg.Routing, "routing", []string{lab.RoutingNative, lab.RoutingTunnel}, "routing modes between the nodes for the ebpf enforcer, a lab each: native, tunnel")
	fs.StringSliceVar(&cases, "cases", defCases, "rows as RULES/SERVICES")
	fs.DurationVar(&cfg.Duration, "duration", labbench.DefaultDuration, "how long each connection-rate measurement runs")
	fs.DurationVar(&cfg.Warmup, "warmup", labbench.DefaultWarmup, "connection loops before each measurement, uncounted")
	fs.IntVar(&cfg.Rounds, "rounds", labbench.DefaultRounds, "measurements per row, the enforcers taking turns; a row shows their median")
	fs.IntVar(&cfg.Workers, "workers", labbench.DefaultWorkers, "parallel connection loops")
	fs.IntVar(&cfg.RRCount, "rr-count", labbench.DefaultRRCount, "timed ping-pongs per latency measurement")
	fs.IntVar(&cfg.RRSize, "rr-size", labbench.DefaultRRSize, "bytes per ping and per pong")
	fs.IntVar(&cfg.Applies, "applies", labbench.DefaultApplies, "timed policy applies on the ebpf lab (0: none)")
	fs.BoolVar(&cfg.AllowByIPBlock, "allow-by-ipblock", false, "ebpf: allow the client by an ipBlock of its IP, not a podSelector (the CIDR map's policy path)")
	fs.StringVar(&cfg.IPTablesRestore, "iptables-restore", labbench.DefaultIPTablesRestore, "iptables-restore binary; its backend (nft or legacy) is the one measured")
	fs.StringVar(&runDir, "run-dir", lab.DefaultRunDir, "parent of the labs' run directories")
	fs.StringVar(&bpffs, "bpffs", lab.DefaultBPFFS, "bpffs mount for the agents' pins")
	// Tests run the bench inside a test binary, which cannot be the lab's
	// helper: they name the binaries.
	fs.StringVar(&meshctlBin, "meshctl", "", "meshctl binary for the lab's helpers (default: this one)")
	fs.StringVar(&agentBin, "agent", "", "mesh-agent binary (default: beside meshctl)")
	_ = fs.MarkHidden("meshctl")
	_ = fs.MarkHidden("agent")
	addOutputFlag(cmd, &format)
	return cmd
}

// printDatapathReport prints the rows as a table and the policy applies
// on a line of their own.
func printDatapathReport(w io.Writer, rep labbench.Report) error {
	t := newTable(w, "ENFORCER", "ROUTING", "RULES", "SERVICES", "CONN/S", "RR P50 µs", "RR P99 µs", "VS NATIVE (CONN/S, P50, P99)", "AGENTS CPU %", "CONN ERRORS", "APPLY s")
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	for _, r := range rep.Rows {
		vs := "-"
		if r.ConnPerSVsNativeRatio != 0 {
			vs = fmt.Sprintf("%s×, %s×, %s×", f(r.ConnPerSVsNativeRatio), f(r.RRP50VsNativeRatio), f(r.RRP99VsNativeRatio))
		}
		t.row(r.Enforcer, r.Routing, strconv.Itoa(r.Rules), strconv.Itoa(r.Services), f(r.ConnPerS), f(r.RRP50US), f(r.RRP99US), vs,
			f(r.AgentCPUPct), strconv.Itoa(r.ConnErrors), f(r.ApplyS))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if rep.IPTablesVersion != "" {
		fmt.Fprintf(w, "\niptables: %s\n", rep.IPTablesVersion)
	}
	if rep.PolicyApplies > 0 {
		fmt.Fprintf(w, "policy apply to enforcement on every node (%d applies): p50 %s ms, p99 %s ms, max %s ms\n",
			rep.PolicyApplies, f(rep.PolicyApplyP50MS), f(rep.PolicyApplyP99MS), f(rep.PolicyApplyMaxMS))
	}
	return nil
}
