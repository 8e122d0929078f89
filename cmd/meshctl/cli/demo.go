package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/kvstore/embedded"
	"github.com/meshplane/meshplane/labels"
)

func newDemoCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the lab demo: real pods, policy and a service on eBPF, with a probe matrix",
		Long: `demo builds a lab on this machine (see docs/lab.md): one cluster with its own
embedded etcd, two nodes as network namespaces with a mesh-agent each, pods
in two namespaces and a service. It probes a matrix of real connections,
applies a sample NetworkPolicy, probes again and prints both results with
the datapath's drop reasons, then removes everything. It needs root.

mesh-agent must be beside meshctl (make build puts both in bin/).`,
		Args: cobra.NoArgs,
	}
	o.addLabDemo(cmd)
	cmd.AddCommand(newDemoIdentitiesCmd(o))
	return cmd
}

func newDemoIdentitiesCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "identities",
		Short: "Show identity allocation and GC with three simulated nodes",
		Long: `demo starts an embedded etcd in a temporary directory (or in --state-dir, if
given on the command line) and three simulated node agents. Pods of a few
workloads start on the nodes at once; the nodes agree on one identity per
workload, with per-pod labels such as pod-template-hash filtered out. Then
node-3 stops, its references vanish with its lease, and GC collects the
identities that only node-3 used.

demo never talks to an external etcd: it runs GC, which must not touch a
real cluster's identities.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(o.endpointList()) > 0 {
				return errors.New("demo runs its own embedded etcd and garbage-collects identities; drop --etcd-endpoints")
			}
			dir := o.stateDir
			if !o.stateDirGiven {
				tmp, err := os.MkdirTemp("", "meshctl-demo-")
				if err != nil {
					return fmt.Errorf("demo: temporary state directory: %w", err)
				}
				defer func() { _ = os.RemoveAll(tmp) }()
				dir = tmp
			}
			return o.demo(cmd.Context(), dir)
		},
	}
}

// demoPod is a pod as the agent sees it: its node and its labels, per-pod
// ones included.
type demoPod struct {
	node, namespace, app string
	extra                string // labels the filter drops
}

var demoPods = []demoPod{
	{"node-1", "shop", "frontend", "k8s:pod-template-hash=7d9f8c6b5"},
	{"node-2", "shop", "frontend", "k8s:pod-template-hash=7d9f8c6b5"},
	{"node-2", "shop", "frontend", "k8s:pod-template-hash=5f6d7c8b9"}, // a rollout in progress
	{"node-1", "shop", "backend", "k8s:pod-template-hash=6c8d9f7b4"},
	{"node-3", "shop", "backend", "k8s:pod-template-hash=6c8d9f7b4"},
	{"node-3", "shop", "db", "k8s:statefulset.kubernetes.io/pod-name=db-0,k8s:controller-revision-hash=db-5b7c9"},
	{"node-2", "billing", "backend", "k8s:pod-template-hash=84f9d6c7b"},
	{"node-3", "billing", "db", "k8s:statefulset.kubernetes.io/pod-name=db-0,k8s:controller-revision-hash=db-9d8e7"},
}

var demoNodes = []string{"node-1", "node-2", "node-3"}

func (p demoPod) workload() string { return p.namespace + "/" + p.app }

func (p demoPod) labels() (labels.Set, error) {
	return labels.ParseSet(fmt.Sprintf("k8s:app=%s,k8s:io.kubernetes.pod.namespace=%s,%s", p.app, p.namespace, p.extra))
}

// demoWorkload is one row of the demo's table.
type demoWorkload struct {
	name   string
	nodes  []string
	labels labels.Set // filtered
	id     identity.ID
}

func (o *options) demo(ctx context.Context, dir string) (err error) {
	out := o.stdout
	base, err := embedded.Connect(ctx, dir, kvstore.Config{DialTimeout: o.etcd.DialTimeout})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "meshplane identity demo: %d nodes, cluster %q (ID %d), embedded etcd in %s\n\n",
		len(demoNodes), o.clusterName, o.clusterID, dir)

	agents := make([]*agent, len(demoNodes))
	defer func() {
		cerr := errors.Join(stopAgents(agents), base.Close())
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("demo cleanup: %w", cerr))
		}
	}()
	for i, node := range demoNodes {
		client, err := kvstore.New(ctx, kvstore.Config{Endpoints: base.Endpoints(), DialTimeout: o.etcd.DialTimeout})
		if err != nil {
			return err
		}
		agents[i], err = startAgent(ctx, client, true, agentConfig{
			cluster: o.clusterName, clusterID: o.clusterID, node: node, sessionTTL: 10 * time.Second,
		})
		if err != nil {
			return err
		}
	}
	byNode := func(node string) *agent { return agents[slices.Index(demoNodes, node)] }

	// Every pod starts at once: nodes race for the new label sets.
	ids := make([]identity.ID, len(demoPods))
	errs := make([]error, len(demoPods))
	var wg sync.WaitGroup
	for i, p := range demoPods {
		wg.Go(func() {
			set, err := p.labels()
			if err == nil {
				ids[i], err = byNode(p.node).alloc.Allocate(ctx, set)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	workloads, err := demoTable(demoPods, ids)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d pods started on %d nodes; per-pod labels (pod-template-hash, statefulset pod name, ...) are filtered out:\n\n",
		len(demoPods), len(demoNodes))
	t := newTable(out, "WORKLOAD", "NODES", "LABELS", "ID")
	for _, w := range workloads {
		t.row(w.name, strings.Join(w.nodes, ","), w.labels.String(), w.id.String())
	}
	if err := t.flush(); err != nil {
		return err
	}

	// Every node learns every identity through its watch: poll until all
	// caches hold all of them.
	if err := waitAgree(ctx, agents, workloads); err != nil {
		return err
	}
	fmt.Fprintln(out)
	for _, ag := range agents {
		st := ag.alloc.Stats()
		fmt.Fprintf(out, "%s: created %d, joined %d, holds %d; its cache maps all %d IDs to the same labels\n",
			ag.node, st.Created, st.Joined, st.Held, len(workloads))
	}

	stopped := demoNodes[len(demoNodes)-1]
	fmt.Fprintf(out, "\nstopping %s: its lease is revoked and its references go with it\n", stopped)
	if err := byNode(stopped).stop(); err != nil {
		return err
	}
	gc, err := allocator.NewGC(base, allocator.GCConfig{Cluster: o.clusterName, GracePeriod: 0})
	if err != nil {
		return err
	}
	mark, err := gc.Pass(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "gc pass 1: %d of %d identities referenced, %d marked unreferenced\n", mark.Referenced, mark.Identities, mark.Candidates)
	sweep, err := gc.Pass(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "gc pass 2: grace period 0 is over: %d deleted, %d conflicts\n", sweep.Deleted, sweep.Conflicts)
	kvs, _, err := base.List(ctx, o.keys().IdentityIDPrefix())
	if err != nil {
		return err
	}
	left := make(map[string]bool)
	for _, kv := range kvs {
		left[strings.TrimPrefix(kv.Key, o.keys().IdentityIDPrefix())] = true
	}
	var kept, collected []string
	for _, w := range workloads {
		s := fmt.Sprintf("%s (%d)", w.name, w.id)
		if left[w.id.String()] {
			kept = append(kept, s)
		} else {
			collected = append(collected, s)
		}
	}
	fmt.Fprintf(out, "\ncollected: %s, used only on %s\n", orNone(collected), stopped)
	fmt.Fprintf(out, "kept:      %s\n", orNone(kept))
	return nil
}

// demoTable groups the pods by workload and checks that the pods of one
// workload got one ID.
func demoTable(pods []demoPod, ids []identity.ID) ([]demoWorkload, error) {
	filter, err := labels.NewFilter(labels.DefaultFilterPatterns())
	if err != nil {
		return nil, err
	}
	var out []demoWorkload
	for i, p := range pods {
		k := slices.IndexFunc(out, func(w demoWorkload) bool { return w.name == p.workload() })
		if k < 0 {
			set, _ := p.labels() // parsed once already
			out = append(out, demoWorkload{name: p.workload(), labels: filter.Apply(set), id: ids[i]})
			k = len(out) - 1
		}
		w := &out[k]
		if w.id != ids[i] {
			return nil, fmt.Errorf("demo failed: pods of %s got IDs %d and %d", w.name, w.id, ids[i])
		}
		if !slices.Contains(w.nodes, p.node) {
			w.nodes = append(w.nodes, p.node)
			slices.Sort(w.nodes)
		}
	}
	return out, nil
}

// waitAgree polls every agent's cache until it maps every workload's ID to
// the workload's labels, for up to 5s.
func waitAgree(ctx context.Context, agents []*agent, workloads []demoWorkload) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var missing []string
		for _, ag := range agents {
			for _, w := range workloads {
				if set, ok := ag.alloc.LookupID(w.id); !ok || !set.Equal(w.labels) {
					missing = append(missing, ag.node+": "+strconv.Itoa(int(w.id)))
				}
			}
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo failed: nodes do not agree after 5s: %s", strings.Join(missing, ", "))
		case <-tick.C:
		}
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
