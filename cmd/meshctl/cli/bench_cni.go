package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/bench/cnibench"
	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/nodeagent"
)

func newBenchCNICmd(o *options) *cobra.Command {
	var (
		cfg     cnibench.Config
		format  string
		inNetns bool
	)
	cmd := &cobra.Command{
		Use:   "cni",
		Short: "Measure CNI ADD and DEL through mesh-cni against a real agent",
		Long: `bench cni times the CNI plugin as a container runtime calls it: every ADD
and DEL is an exec of the real mesh-cni binary (--plugin; default: mesh-cni
beside meshctl) with the CNI environment and configuration, against a node
agent (the eBPF datapath unless --datapath none) on an embedded etcd, with a
real network namespace per pod. It needs root.

It runs in a network namespace of its own, which plays the node (the host's
gets no interface or route): meshctl creates it, runs itself in it, and
deletes it at the end. The --etcd-* flags are not used.

Each pod's metadata is written to etcd (pods/<node>/<namespace>/<name>)
before its ADD, as the control plane writes it when the pod is scheduled.
Two phases of --pods pods, --parallel commands at a time; each adds all its
pods, then deletes them:
1. a new identity per pod (each has labels of its own): add_*, del_*,
   pods_per_s;
2. one known identity (all pods share labels whose identity a first pod
   holds): known_add_*, known_del_*, known_pods_per_s.
pods_per_s is the pods over the wall time of the phase's ADDs.`,
		Example: `  meshctl bench cni --pods 100 --parallel 10 -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("bench cni: run as root (network namespaces, veths, eBPF)")
			}
			if cfg.Plugin == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("bench cni: %w", err)
				}
				cfg.Plugin = filepath.Join(filepath.Dir(self), "mesh-cni")
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("bench cni: %w", err)
			}
			if !inNetns {
				return benchCNIInNetns(cmd, o, cfg, format)
			}
			cfg.Progress = func(s string) { fmt.Fprintln(o.stderr, s+"...") }
			rep, err := cnibench.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return writeReport(o.stdout, format, rep)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&cfg.Pods, "pods", 100, fmt.Sprintf("pods of each phase (1-%d)", cnibench.MaxPods))
	fs.IntVar(&cfg.Parallel, "parallel", 10, fmt.Sprintf("CNI commands at once (1-%d)", cnibench.MaxParallel))
	fs.StringVar(&cfg.Plugin, "plugin", "", "the mesh-cni binary (default: mesh-cni beside meshctl)")
	fs.StringVar(&cfg.Datapath, "datapath", nodeagent.DatapathEBPF, "the agent's datapath: ebpf (programs attached to each veth) or none (maps only)")
	fs.StringVar((*string)(&cfg.Attach), "datapath-attach", string(bpf.AttachTC), "the eBPF datapath's attachment to each veth: tc (clsact and cls_bpf) or tcx (pinned tcx links), as mesh-agent's --datapath-attach")
	fs.DurationVar(&cfg.Timeout, "timeout", 0, "bound of each phase (0: 1m plus 200ms a pod)")
	fs.BoolVar(&inNetns, "in-netns", false, "run here: the caller made this process's network namespace (meshctl does)")
	_ = fs.MarkHidden("in-netns")
	addOutputFlag(cmd, &format)
	return cmd
}

// benchCNIInNetns runs bench cni again in a network namespace made for it,
// and deletes the namespace afterwards.
func benchCNIInNetns(cmd *cobra.Command, o *options, cfg cnibench.Config, format string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench cni: %w", err)
	}
	name := fmt.Sprintf("mp-cnibench-%d-node", os.Getpid())
	if err := cnibench.NewNetns(name); err != nil {
		return err
	}
	defer func() { _ = cnibench.DeleteNetns(name) }()
	args := []string{"lab", "nsexec", "--netns=" + filepath.Join("/run/netns", name), "--",
		self, "bench", "cni", "--in-netns",
		"--pods=" + strconv.Itoa(cfg.Pods), "--parallel=" + strconv.Itoa(cfg.Parallel),
		"--plugin=" + cfg.Plugin, "--datapath=" + cfg.Datapath, "--datapath-attach=" + string(cfg.Attach), "--timeout=" + cfg.Timeout.String(), "-o", format}
	c := exec.CommandContext(cmd.Context(), self, args...)
	c.Stdout, c.Stderr = o.stdout, o.stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("bench cni: %w", err)
	}
	return nil
}
