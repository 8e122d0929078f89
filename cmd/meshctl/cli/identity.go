package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/labels"
)

// ErrNotFound is wrapped when a named identity does not exist.
var ErrNotFound = errors.New("not found")

// cliSessionTTL is the lease of a command's own session. The command
// revokes it on exit; the TTL only matters if meshctl is killed.
const cliSessionTTL = 15 * time.Second

func newIdentityCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Allocate, list, inspect and garbage-collect security identities",
	}
	cmd.AddCommand(newIdentityAllocateCmd(o), newIdentityListCmd(o), newIdentityGetCmd(o), newIdentityGCCmd(o))
	return cmd
}

func newIdentityAllocateCmd(o *options) *cobra.Command {
	var labelsFlag string
	cmd := &cobra.Command{
		Use:   "allocate --labels SOURCE:KEY=VALUE,...",
		Short: "Allocate the identity of a label set and print its ID",
		Long: `allocate prints the security identity of a label set, creating it in etcd if
no node has yet. Labels that differ per pod or rollout (pod-template-hash,
controller-revision-hash, ...) are dropped first, as the agent does.

meshctl allocates as node --node-name, on a session of its own. Its reference
to the identity rides on that session's lease, which meshctl revokes when it
exits: the identity persists until GC collects it unreferenced (see
'meshctl identity gc'), unless an agent references it meanwhile.`,
		Example: `  meshctl identity allocate --labels k8s:app=web,k8s:io.kubernetes.pod.namespace=shop`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := labels.ParseSet(labelsFlag)
			if err != nil {
				return fmt.Errorf("--labels: %w", err)
			}
			filter, err := labels.NewFilter(labels.DefaultFilterPatterns())
			if err != nil {
				return err
			}
			if filter.Apply(set).IsEmpty() {
				return fmt.Errorf("--labels %q: %w: every label is one that differs per pod and is dropped; add a label that names the workload, e.g. k8s:app=web",
					labelsFlag, labels.ErrInvalid)
			}
			if err := o.validateNode(); err != nil {
				return err
			}
			id, err := o.allocate(cmd.Context(), set)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(o.stdout, id)
			return err
		},
	}
	cmd.Flags().StringVar(&labelsFlag, "labels", "", "the label set, comma-separated SOURCE:KEY=VALUE labels (required)")
	_ = cmd.MarkFlagRequired("labels")
	return cmd
}

// allocate runs an agent for the one allocation.
func (o *options) allocate(ctx context.Context, set labels.Set) (_ identity.ID, err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return 0, err
	}
	ag, err := startAgent(ctx, client, true, agentConfig{
		cluster: o.clusterName, clusterID: o.clusterID, node: o.nodeName, sessionTTL: cliSessionTTL,
	})
	if err != nil {
		return 0, err
	}
	defer func() {
		if serr := ag.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	return ag.alloc.Allocate(ctx, set)
}

// identityInfo is one identity as list and get print it.
type identityInfo struct {
	ID     identity.ID `json:"id"`
	Name   string      `json:"name,omitempty"` // reserved identities only
	Labels string      `json:"labels"`
	Refs   int         `json:"refs"`
	Nodes  []string    `json:"nodes,omitempty"` // get only
}

func newIdentityListCmd(o *options) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the identities of the cluster",
		Long: `list prints every identity allocated in the cluster's etcd, with the number
of nodes that reference it. An identity with no references is collected by
GC after its grace period. Keys that do not decode are reported as warnings
and skipped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			ids, err := o.listIdentities(cmd.Context())
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, ids)
			}
			t := newTable(o.stdout, "ID", "CLUSTER", "LABELS", "REFS")
			for _, in := range ids {
				t.row(in.ID.String(), strconv.Itoa(int(in.ID.Cluster())), in.Labels, strconv.Itoa(in.Refs))
			}
			return t.flush()
		},
	}
	addOutputFlag(cmd, &format)
	return cmd
}

// listIdentities reads the cluster's identities, sorted by ID, and counts
// the references of each. The ID keys are read before the references, so a
// reference written in between is counted rather than missed.
func (o *options) listIdentities(ctx context.Context) (_ []identityInfo, err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer closeClient(client, &err)
	keys := o.keys()
	kvs, _, err := client.List(ctx, keys.IdentityIDPrefix())
	if err != nil {
		return nil, err
	}
	refs, _, err := client.List(ctx, keys.IdentityRefsPrefix())
	if err != nil {
		return nil, err
	}
	byHash := make(map[string]int)
	for _, kv := range refs {
		hash, _, _ := strings.Cut(strings.TrimPrefix(kv.Key, keys.IdentityRefsPrefix()), "/")
		byHash[hash]++
	}
	out := make([]identityInfo, 0, len(kvs))
	for _, kv := range kvs {
		key := strings.TrimPrefix(kv.Key, keys.IdentityIDPrefix())
		set, err := allocator.DecodeIdentity(key, kv.Value)
		if err != nil {
			fmt.Fprintf(o.stderr, "warning: skipping corrupt identity key %s: %v\n", kv.Key, err)
			continue
		}
		id, _ := identity.Parse(key) // DecodeIdentity checked it
		out = append(out, identityInfo{ID: id, Labels: set.String(), Refs: byHash[set.Hash()]})
	}
	slices.SortFunc(out, func(a, b identityInfo) int { return int(a.ID) - int(b.ID) })
	return out, nil
}

func newIdentityGetCmd(o *options) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show the labels of an identity and the nodes that reference it",
		Long: `get shows one identity: a number, or the name of a reserved identity (host,
world, unmanaged, health, init, remote-node, kube-apiserver).`,
		Example: "  meshctl identity get 65792\n  meshctl identity get host",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			id, err := identity.Parse(args[0])
			if err != nil {
				return err
			}
			in, err := o.getIdentity(cmd.Context(), id)
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, in)
			}
			t := newTable(o.stdout)
			t.row("ID", in.ID.String())
			if in.Name != "" {
				t.row("RESERVED", in.Name)
			}
			t.row("LABELS", in.Labels)
			if in.Name == "" {
				t.row("REFS", strconv.Itoa(in.Refs))
				t.row("NODES", strings.Join(in.Nodes, ","))
			}
			return t.flush()
		},
	}
	addOutputFlag(cmd, &format)
	return cmd
}

func (o *options) getIdentity(ctx context.Context, id identity.ID) (_ identityInfo, err error) {
	if name, ok := id.ReservedName(); ok {
		// Reserved identities are fixed numbers, never stored in etcd.
		return identityInfo{ID: id, Name: name, Labels: "reserved:" + name}, nil
	}
	if id.IsReserved() {
		return identityInfo{}, fmt.Errorf("identity %s %w: IDs 1-%d are reserved and only %s are defined",
			id, ErrNotFound, identity.MaxReserved, reservedNames())
	}
	client, err := o.connect(ctx)
	if err != nil {
		return identityInfo{}, err
	}
	defer closeClient(client, &err)
	keys := o.keys()
	kv, ok, err := client.Get(ctx, keys.IdentityID(id.String()))
	if err != nil {
		return identityInfo{}, err
	}
	if !ok {
		return identityInfo{}, fmt.Errorf("identity %s %w in cluster %q; see 'meshctl identity list'", id, ErrNotFound, o.clusterName)
	}
	set, err := allocator.DecodeIdentity(id.String(), kv.Value)
	if err != nil {
		return identityInfo{}, fmt.Errorf("%w; the key %s is corrupt: repair or delete it", err, kv.Key)
	}
	refs, _, err := client.List(ctx, keys.IdentityRefs(set.Hash()))
	if err != nil {
		return identityInfo{}, err
	}
	in := identityInfo{ID: id, Labels: set.String(), Refs: len(refs), Nodes: []string{}}
	for _, kv := range refs {
		in.Nodes = append(in.Nodes, strings.TrimPrefix(kv.Key, keys.IdentityRefs(set.Hash())))
	}
	return in, nil
}

func reservedNames() string {
	var names []string
	for _, id := range identity.Reserved() {
		n, _ := id.ReservedName()
		names = append(names, fmt.Sprintf("%s (%d)", n, id))
	}
	return strings.Join(names, ", ")
}

// gcReport is what `identity gc` prints: the passes' results combined.
type gcReport struct {
	Identities int `json:"identities"` // identity keys seen by the first pass
	Referenced int `json:"referenced"` // referenced in the last pass
	Deleted    int `json:"deleted"`    // deleted by all passes
	Candidates int `json:"candidates"` // unreferenced but not deleted yet (last pass)
	Conflicts  int `json:"conflicts"`  // deletions refused: a reference appeared or the keys changed
	Invalid    int `json:"invalid"`    // corrupt keys skipped (last pass)
	Passes     int `json:"passes"`
}

func newIdentityGCCmd(o *options) *cobra.Command {
	var (
		format string
		grace  time.Duration
		rate   float64
	)
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Delete identities that no node references",
		Long: `gc runs identity garbage collection once, as the control plane does
periodically. A first pass marks the identities no node references; if there
are any, gc waits --grace and a second pass deletes those still unreferenced
and unchanged. An identity a node references again in between is kept: the
delete is a transaction that fails if any reference exists.

--grace 0 deletes in the second pass, right away. It is still safe for
identities that are in use, but it also takes identities whose workloads are
only restarting.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if grace < 0 {
				return fmt.Errorf("--grace %s: use 0 or a positive duration", grace)
			}
			if rate <= 0 {
				return fmt.Errorf("--rate %g: use a positive number of deletions per second", rate)
			}
			rep, err := o.gc(cmd.Context(), grace, rate)
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, rep)
			}
			t := newTable(o.stdout)
			for _, r := range []struct {
				k string
				v int
			}{
				{"identities", rep.Identities}, {"referenced", rep.Referenced}, {"deleted", rep.Deleted},
				{"candidates", rep.Candidates}, {"conflicts", rep.Conflicts}, {"invalid", rep.Invalid},
			} {
				t.row(r.k, strconv.Itoa(r.v))
			}
			return t.flush()
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 30*time.Second, "how long an identity must stay unreferenced before it is deleted")
	cmd.Flags().Float64Var(&rate, "rate", 100, "deletions per second at most")
	addOutputFlag(cmd, &format)
	return cmd
}

func (o *options) gc(ctx context.Context, grace time.Duration, rate float64) (_ gcReport, err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return gcReport{}, err
	}
	defer closeClient(client, &err)
	gc, err := allocator.NewGC(client, allocator.GCConfig{Cluster: o.clusterName, GracePeriod: grace, DeletesPerSecond: rate})
	if err != nil {
		return gcReport{}, err
	}
	first, err := gc.Pass(ctx)
	if err != nil {
		return gcReport{}, err
	}
	rep := gcReport{Identities: first.Identities, Passes: 1, Deleted: first.Deleted, Conflicts: first.Conflicts}
	last := first
	if first.Candidates > 0 {
		fmt.Fprintf(o.stderr, "%d candidates, waiting %s\n", first.Candidates, grace)
		t := time.NewTimer(grace)
		select {
		case <-ctx.Done():
			t.Stop()
			return gcReport{}, fmt.Errorf("identity gc: interrupted during the grace period; nothing was deleted: %w", ctx.Err())
		case <-t.C:
		}
		if last, err = gc.Pass(ctx); err != nil {
			return gcReport{}, err
		}
		rep.Passes++
		rep.Deleted += last.Deleted
		rep.Conflicts += last.Conflicts
	}
	rep.Referenced, rep.Candidates, rep.Invalid = last.Referenced, last.Candidates, last.Invalid
	return rep, nil
}
