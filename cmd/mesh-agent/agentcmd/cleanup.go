package agentcmd

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/meshplane/meshplane/nodeagent"
)

// bindCleanup defines --cleanup and --cleanup-wait: the uninstall mode.
func bindCleanup(fs *pflag.FlagSet, f *flags) {
	fs.BoolVar(&f.cleanup, "cleanup", false,
		"uninstall: take the datapath's tc filters off this node's veths, remove its pinned maps (<bpffs>/meshplane/<node>), state directory and API socket, then exit; refused while an agent runs on the node. Uses only --node-name, --bpffs, --state-dir, --api-socket")
	fs.BoolVar(&f.cleanupWait, "cleanup-wait", false, "with --cleanup: after removing, wait until stopped (SIGTERM) instead of exiting, as a DaemonSet's container must")
}

// cleanupConfig is the part of the agent's Config that --cleanup uses.
// Nothing else is validated: uninstalling needs no etcd.
func (f *flags) cleanupConfig() (loaded, error) {
	cfg := nodeagent.Config{Node: f.node, StateDir: f.stateDir, APISocket: f.apiSocket}
	cfg.BPF.Dir = f.bpf.Dir
	if cfg.APISocket != "" {
		abs, err := filepath.Abs(cfg.APISocket)
		if err != nil {
			return loaded{}, fmt.Errorf("--api-socket %q: %w", cfg.APISocket, err)
		}
		cfg.APISocket = abs
	}
	return loaded{cleanup: &cfg, cleanupWait: f.cleanupWait}, nil
}

// cleanup runs --cleanup and returns the exit code.
func cleanup(ctx context.Context, l loaded, stderr io.Writer) int {
	cfg := *l.cleanup
	if err := nodeagent.Cleanup(cfg); err != nil {
		fmt.Fprintln(stderr, "mesh-agent: cleanup:", err)
		return 1
	}
	fmt.Fprintf(stderr, "mesh-agent: cleanup done: node %s's tc filters, pinned maps, state and API socket are removed\n", cfg.Node)
	if l.cleanupWait {
		<-ctx.Done()
	}
	return 0
}
