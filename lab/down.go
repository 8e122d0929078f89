package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshplane/meshplane/kvstore"
)

// Down removes everything lab name made, whatever state it is in (up,
// half up after a crash, half down): its processes, its network
// namespaces (and with them every interface, route and bridge of the
// lab), its bpffs pins, the cluster keys it wrote into an external etcd,
// and its run directory. It is idempotent: a lab that is not there is not
// an error.
//
// It finds the processes by the PIDs in the state file and by scanning
// /proc for the lab's mark (an argument naming the run directory), and
// kills a PID only while it still carries the mark, so a recycled PID is
// never hit. It finds the namespaces by name: mp-<name>-..., under
// /run/netns.
func Down(ctx context.Context, name string, o Options) error {
	if !labNameRE.MatchString(name) || len(name) > maxLabName {
		return fmt.Errorf("lab name %q: use 1-%d lowercase letters, digits and '-'", name, maxLabName)
	}
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	dir := filepath.Join(o.RunDir, name)
	// Without a state file (or with a torn one) the lab still goes: the
	// scan below finds the processes, and the netns names are known.
	st, err := loadState(dir)
	if err != nil {
		st = nil
	}
	var errs []error
	// Agents first (they stop using the datapath and etcd), then echo
	// servers, control planes, API servers, then etcd; then whatever the
	// scan finds.
	var agents, echos, etcds []int
	if st != nil {
		for _, c := range st.Clusters {
			etcds = append(etcds, c.EtcdPID)
			for _, n := range c.Nodes {
				agents = append(agents, n.AgentPID)
			}
		}
		for _, p := range st.Pods {
			echos = append(echos, p.EchoPID)
		}
		for _, x := range st.Externals {
			echos = append(echos, x.EchoPID)
		}
	}
	var controlplanes, apiservers []int
	if st != nil {
		controlplanes, apiservers = kubePIDs(st)
	}
	for _, group := range [][]int{agents, echos, controlplanes, apiservers, etcds, scanProcs(dir)} {
		errs = append(errs, stopAll(ctx, group, dir))
	}
	if st != nil {
		errs = append(errs, dropExternalKeys(ctx, st))
	}
	left, err := listLabNetns(name)
	errs = append(errs, err)
	for _, ns := range left {
		errs = append(errs, deleteNetns(ns))
	}
	bpffs := filepath.Join(o.BPFFS, "mp-"+name)
	if st != nil && st.BPFFS != "" {
		bpffs = st.BPFFS
	}
	if err := os.RemoveAll(bpffs); err != nil {
		errs = append(errs, fmt.Errorf("remove pins %s: %w", bpffs, err))
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove run dir: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s down: %w", name, err)
	}
	return nil
}

// stopAll stops a group of processes at once: SIGTERM to all, then each
// is waited for (and killed if it lingers).
func stopAll(ctx context.Context, pids []int, dir string) error {
	errc := make(chan error, len(pids))
	for _, pid := range pids {
		go func() { errc <- stopProc(ctx, pid, dir, stopGrace) }()
	}
	var errs []error
	for range pids {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// dropExternalKeys deletes the keys of the lab's clusters from external
// etcds: only of those Up found empty (OwnsKeys), so never keys that were
// there before the lab.
func dropExternalKeys(ctx context.Context, st *state) error {
	var errs []error
	for _, c := range st.Clusters {
		if len(c.Upstream) == 0 || !c.OwnsKeys {
			continue
		}
		keys, err := kvstore.NewKeys(c.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		client, err := kvstore.New(cctx, kvstore.Config{Endpoints: c.Upstream, DialTimeout: 3 * time.Second})
		if err == nil {
			_, err = client.DeletePrefix(cctx, keys.Prefix())
			err = errors.Join(err, client.Close())
		}
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: delete its keys from %v: %w", c.Name, c.Upstream, err))
		}
	}
	return errors.Join(errs...)
}
