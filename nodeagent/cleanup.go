package nodeagent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/kvstore/allocator"
)

// Cleanup removes what an agent leaves on its node, so that meshplane can
// be uninstalled and a later install starts clean: the datapath's tc
// filters on the veths of the calling thread's network namespace (the
// node's: bpf.RemoveFilters), the node's pinned maps and links
// (bpf.RemovePins: tcx links detach with their pins), its API socket and
// its state directory (pod IP journal, endpoints, lease).
// It is mesh-agent --cleanup, run by the uninstall DaemonSet.
//
// Only cfg's Node, StateDir, BPF.Dir and APISocket count, with Validate's
// defaults (StateDir DefaultStateDir/<node>, BPF.Dir bpf.DefaultDir,
// APISocket DefaultAPISocket). It takes the state directory's lock first:
// while an agent runs on the node it removes nothing and returns a
// *StateDirInUseError. What is already gone is no error, so it can run
// again. Nothing in etcd is touched: the node's record and CIDR leave
// with its lease, or with `meshctl` for a node that is gone for good.
func Cleanup(cfg Config) error {
	if err := allocator.ValidateNodeName(cfg.Node); err != nil {
		return fmt.Errorf("%w: node name: %w", ErrConfig, err)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(DefaultStateDir, cfg.Node)
	}
	if cfg.APISocket == "" {
		cfg.APISocket = DefaultAPISocket
	}
	cfg.BPF.Node = cfg.Node
	if _, err := os.Stat(cfg.StateDir); errors.Is(err, os.ErrNotExist) {
		// Nothing to lock: no agent ever ran here, or it was cleaned.
		return errors.Join(bpf.RemoveFilters(cfg.BPF), bpf.RemovePins(cfg.BPF), removeSocket(cfg.APISocket))
	}
	lock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	errs := []error{bpf.RemoveFilters(cfg.BPF), bpf.RemovePins(cfg.BPF), removeSocket(cfg.APISocket)}
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		errs = append(errs, fmt.Errorf("remove state directory: %w", err))
	}
	return errors.Join(append(errs, lock.Close())...)
}

func removeSocket(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove API socket: %w", err)
	}
	return nil
}
