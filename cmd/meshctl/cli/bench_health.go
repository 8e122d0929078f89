package cli

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/lab"
	"github.com/meshplane/meshplane/lab/healthbench"
)

func newBenchHealthCmd(o *options) *cobra.Command {
	var (
		cfg                  healthbench.Config
		format               string
		runDir, bpffs        string
		meshctlBin, agentBin string
	)
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Measure node failure detection in the lab under CPU load: false removals, crash to removal, restarts",
		Long: `bench health builds a lab (docs/lab.md) per cluster size in --nodes, each of one
cluster with nodes n1..nN, a pod web-<node> on every node that is the one
backend of a service web-<node>, and a client pod on n1; its agents run as
separate processes. It needs root and a bpffs. While a case runs, the CPUs are
loaded with --load-processes busy-looping processes (default: 2 per CPU),
killed by PID at the end.

Every 20 ms it reads, from every node's pinned maps, whether each other node's
backend (its service's one slot) and route (its pod CIDR) are there. Then:

  steady    --duration with no fault: every removal is false.
  crashes   --crashes times, a node's agent (not n1's, in turn) is killed with
            SIGKILL; crash_to_removal is until its backend and route are gone
            from every other node's maps. The agent is started again.
  pauses    --pauses times, an agent is stopped with SIGSTOP for --pause and
            continued: every removal is false.
  restarts  --restarts times, an agent is stopped with SIGTERM, kept down for
            --restart-down and started again, while the client opens a
            connection through that node's service every 20 ms and echoes
            over a long-lived one: restart_dropped_connections counts the new
            connections that failed and the long-lived ones that broke.

false_removals counts the removals of a live node from any node's maps in any
phase (all but those of a crashed node until it is back). unconfirmed_deaths
are deaths gossip declared that the agents' direct check refused to confirm.
The labs are removed at the end, also on error or interrupt. Results and how
to read them: docs/benchmarks.md.`,
		Example: `  meshctl bench health --nodes 3,2 --duration 3m --crashes 20 --pauses 5 --restarts 10 -o json
  meshctl bench health --nodes 2 --duration 20s --crashes 3 --pauses 1 --restarts 1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			cfg.Lab = lab.Options{RunDir: runDir, BPFFS: bpffs, Meshctl: meshctlBin, Agent: agentBin}
			cfg.Progress = o.stderr
			rep, err := healthbench.Run(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("bench health: %w", err)
			}
			if format == formatJSON {
				return writeJSON(o.stdout, rep)
			}
			return printHealthReport(o.stdout, rep)
		},
	}
	fs := cmd.Flags()
	fs.IntSliceVar(&cfg.Nodes, "nodes", healthbench.DefaultNodes, "cluster sizes, one lab each (2-8 nodes)")
	fs.DurationVar(&cfg.Duration, "duration", healthbench.DefaultDuration, "how long the steady phase (no fault, CPUs loaded) runs")
	fs.IntVar(&cfg.Crashes, "crashes", healthbench.DefaultCrashes, "agent crashes (SIGKILL) per cluster size; negative: none")
	fs.IntVar(&cfg.Pauses, "pauses", healthbench.DefaultPauses, "agent pauses (SIGSTOP) per cluster size; negative: none")
	fs.DurationVar(&cfg.Pause, "pause", healthbench.DefaultPause, "how long each pause lasts")
	fs.IntVar(&cfg.Restarts, "restarts", healthbench.DefaultRestarts, "graceful agent restarts (SIGTERM) per cluster size; negative: none")
	fs.DurationVar(&cfg.RestartDown, "restart-down", healthbench.DefaultRestartDown, "how long a restarting agent stays down")
	fs.IntVar(&cfg.LoadProcs, "load-processes", 0, "busy-looping processes that load the CPUs (0: 2 per CPU; negative: no load)")
	fs.StringArrayVar(&cfg.AgentFlags, "agent-flag", nil, "an extra mesh-agent flag for every agent, such as --agent-flag=--gossip-probe-interval=500ms (repeatable)")
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

// printHealthReport prints a row per cluster size and the totals.
func printHealthReport(w io.Writer, rep healthbench.Report) error {
	t := newTable(w, "NODES", "LOAD s", "CPU BUSY %", "FALSE REMOVALS", "UNCONFIRMED (STEADY/PAUSES)",
		"CRASHES", "CRASH→REMOVAL P50 ms", "P99 ms", "MAX ms", "PAUSES", "RESTARTS", "CONNECTIONS", "DROPPED")
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	for _, r := range rep.Rows {
		t.row(strconv.Itoa(r.Nodes), f(r.LoadDurationS), f(r.LoadCPUBusyPct), strconv.Itoa(r.FalseRemovals),
			fmt.Sprintf("%d/%d", r.SteadyUnconfirmedDeaths, r.PauseUnconfirmedDeaths),
			strconv.Itoa(r.Crashes), f(r.CrashToRemovalP50MS), f(r.CrashToRemovalP99MS), f(r.CrashToRemovalMaxMS),
			strconv.Itoa(r.Pauses), strconv.Itoa(r.Restarts), strconv.Itoa(r.RestartConnections), strconv.Itoa(r.RestartDroppedConnections))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d CPUs, %d load processes, %s s under load: %d false removals; crash to removal on every node over %d crashes: p50 %s ms, p99 %s ms, max %s ms; %d connections dropped by restarts\n",
		rep.CPUs, rep.LoadProcesses, f(rep.LoadDurationS), rep.FalseRemovals, rep.Crashes,
		f(rep.CrashToRemovalP50MS), f(rep.CrashToRemovalP99MS), f(rep.CrashToRemovalMaxMS), rep.RestartDroppedConnections)
	return nil
}
