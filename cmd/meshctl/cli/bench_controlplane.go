package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/bench/cpbench"
)

func newBenchControlPlaneCmd(o *options) *cobra.Command {
	var (
		cfg     cpbench.Config
		noAgent bool
		format  string
	)
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Measure mesh-controlplane against a real kube-apiserver",
		Long: `bench controlplane starts, in this process, an embedded etcd, a real
kube-apiserver on it (the binary ` + "`make kube-apiserver`" + ` builds, or
$MESHPLANE_KUBE_APISERVER), the control plane with its Kubernetes source, and
one node agent (the "none" datapath: real eBPF maps, no programs; it needs
root). The --etcd-* flags are not used: everything runs on its own etcd, in
a temporary directory removed at the end.

1. It counts the apiserver's watches before and after the control plane
   starts (apiserver_watches; one per kind is the design).
2. It creates the namespaces and services, then --pods pods spread over
   --nodes fake nodes (spec.nodeName; no scheduler or kubelet runs), with
   --clients concurrent clients, as fast as the apiserver takes them. The lag
   of each pod is from its create's return to its pods/ key in etcd
   (lag_p50_ms, lag_p99_ms); informer_lag_* (create to the control plane's
   notification) and write_lag_* (notification to etcd) split it.
   events_per_s: the notifications the control plane received, per second.
3. It relabels --relabels pods of the agent's node one at a time (a merge
   patch of the labels, as kubectl label does) and times each until the
   endpoint's identity changes in the agent's endpoints map (relabel_*_ms)
   and until etcd has the new labels (relabel_etcd_*_ms). With --no-agent
   relabel_*_ms is to etcd only, and relabel_to says so.
4. It stops the control plane, empties pods/ and times a fresh one until every
   pod is back (initial_sync_s).`,
		Example: `  meshctl bench controlplane --pods 10000 -o json
  meshctl bench controlplane --pods 1000 --namespaces 20 --services 100 --no-agent`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			cfg.Agent = !noAgent
			if cfg.Agent && os.Geteuid() != 0 {
				return fmt.Errorf("bench controlplane: the agent needs eBPF maps: run as root, or pass --no-agent to time relabels to etcd only")
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("bench controlplane: %w", err)
			}
			cfg.Progress = func(s string) { fmt.Fprintln(o.stderr, s+"...") }
			rep, err := cpbench.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return writeReport(o.stdout, format, rep)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&cfg.Pods, "pods", 1000, fmt.Sprintf("pods to create (1-%d)", cpbench.MaxPods))
	fs.IntVar(&cfg.Namespaces, "namespaces", 0, fmt.Sprintf("namespaces the pods are spread over (1-%d; 0: 10)", cpbench.MaxNamespaces))
	fs.IntVar(&cfg.Services, "services", 0, fmt.Sprintf("services (0-%d; 0: pods/10, -1: none)", cpbench.MaxServices))
	fs.IntVar(&cfg.Nodes, "nodes", 0, fmt.Sprintf("fake nodes the pods are assigned to (1-%d; 0: 4)", cpbench.MaxNodes))
	fs.IntVar(&cfg.Clients, "clients", 0, fmt.Sprintf("concurrent API clients creating (1-%d; 0: 32)", cpbench.MaxClients))
	fs.IntVar(&cfg.Relabels, "relabels", 0, fmt.Sprintf("label changes to time (1-%d; 0: 50)", cpbench.MaxRelabels))
	fs.BoolVar(&noAgent, "no-agent", false, "run no agent: time relabels to etcd only (no root needed)")
	fs.StringVar(&cfg.APIServer, "kube-apiserver", "", "kube-apiserver binary (default: $MESHPLANE_KUBE_APISERVER, else the one `make kube-apiserver` builds)")
	fs.DurationVar(&cfg.Timeout, "timeout", 0, "bound of each phase (0: 2m plus 20ms a pod)")
	addOutputFlag(cmd, &format)
	return cmd
}
