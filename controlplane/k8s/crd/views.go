package crd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/policy"
)

// Identity is one security identity as its MeshIdentity shows it: an
// allocated identity (the allocator's identity cache) and the nodes whose
// references to it are in etcd (identities/refs/).
type Identity struct {
	ID     identity.ID
	Labels labels.Set
	// Nodes that reference the identity, in any order; duplicates count
	// once. The Writer does not keep the slice.
	Nodes []string
}

// Node is one node as its MeshNode shows it: its record in etcd
// (nodes/<node>) and its gossip health.
type Node struct {
	// Name is the node's name, the MeshNode's name.
	Name string
	// Addresses are the node's own IPs (NodeRecord.IPs).
	Addresses []netip.Addr
	// PodCIDRs are the node's pod CIDRs (NodeRecord.PodCIDRs).
	PodCIDRs []netip.Prefix
	// Health is the node's gossip state: v1alpha1.NodeHealth of
	// health.State.String(); empty means HealthUnknown.
	Health v1alpha1.NodeHealth
	// Agent: AgentReady once the agent has published its addresses and
	// gossip endpoint in the record, AgentStarting before; empty leaves
	// it out.
	Agent v1alpha1.AgentState
	// AgentVersion is NodeRecord.Version.
	AgentVersion string
	// PolicyRevision is NodeRecord.PolicyRevision.
	PolicyRevision int64
}

// NodeFromRecord is the view of a node: its record (as written under
// nodes/<node>) and its gossip state (v1alpha1.NodeHealth of
// health.State.String(); "" for none). The agent is Ready once the record
// carries its addresses and gossip endpoint, Starting before (IPAM alone
// has written it).
func NodeFromRecord(r node.Record, h v1alpha1.NodeHealth) Node {
	n := Node{
		Name:           r.Name,
		Addresses:      r.IPs,
		PodCIDRs:       r.PodCIDRs,
		Health:         h,
		Agent:          v1alpha1.AgentStarting,
		AgentVersion:   r.Version,
		PolicyRevision: r.PolicyRevision,
	}
	if len(r.IPs) > 0 && r.GossipAddr != "" {
		n.Agent = v1alpha1.AgentReady
	}
	return n
}

// SyncResult counts what a sync wrote.
type SyncResult struct {
	Created       int // objects created (each with its status)
	Updated       int // objects whose spec was rewritten
	StatusUpdated int // status writes to existing objects
	Deleted       int // objects that matched no input
	Unchanged     int // objects already as wanted: nothing written
}

// ErrDuplicate is returned (wrapped) by the Sync methods when two inputs
// name the same object; the first is kept and the sync goes on.
var ErrDuplicate = errors.New("duplicate view input")

// SyncIdentities makes the MeshIdentity objects match ids: one per
// identity, named by its decimal ID, deleting every other MeshIdentity. It
// is level-triggered: it lists the objects, writes only the difference
// (spec through the object, status through the status subresource) and
// can be called again after any failure. A failure on one object does not
// stop the others; the errors are joined.
func (w *Writer) SyncIdentities(ctx context.Context, ids []Identity) (SyncResult, error) {
	want := make([]*v1alpha1.MeshIdentity, len(ids))
	for i, id := range ids {
		want[i] = identityObject(id)
	}
	list, err := w.client.ListMeshIdentities(ctx)
	if err != nil {
		return SyncResult{}, fmt.Errorf("list meshidentities: %w", rbacHint(err))
	}
	have := make([]*v1alpha1.MeshIdentity, len(list.Items))
	for i := range list.Items {
		have[i] = &list.Items[i]
	}
	return syncViews(ctx, w.client, v1alpha1.ResourceMeshIdentities, "meshidentity", want, have, viewOps[*v1alpha1.MeshIdentity]{
		empty:      func() *v1alpha1.MeshIdentity { return &v1alpha1.MeshIdentity{} },
		sameSpec:   func(a, b *v1alpha1.MeshIdentity) bool { return equality.Semantic.DeepEqual(a.Spec, b.Spec) },
		sameStatus: func(a, b *v1alpha1.MeshIdentity) bool { return equality.Semantic.DeepEqual(a.Status, b.Status) },
		withSpec: func(cur, want *v1alpha1.MeshIdentity) *v1alpha1.MeshIdentity {
			n := cur.DeepCopy()
			n.Spec = want.Spec
			return n
		},
		withStatus: func(cur, want *v1alpha1.MeshIdentity) *v1alpha1.MeshIdentity {
			n := cur.DeepCopy()
			n.Status = want.Status
			return n
		},
	})
}

// SyncNodes makes the MeshNode objects match nodes, one per node, as
// SyncIdentities does for identities.
func (w *Writer) SyncNodes(ctx context.Context, nodes []Node) (SyncResult, error) {
	want := make([]*v1alpha1.MeshNode, len(nodes))
	for i, n := range nodes {
		want[i] = nodeObject(n)
	}
	list, err := w.client.ListMeshNodes(ctx)
	if err != nil {
		return SyncResult{}, fmt.Errorf("list meshnodes: %w", rbacHint(err))
	}
	have := make([]*v1alpha1.MeshNode, len(list.Items))
	for i := range list.Items {
		have[i] = &list.Items[i]
	}
	return syncViews(ctx, w.client, v1alpha1.ResourceMeshNodes, "meshnode", want, have, viewOps[*v1alpha1.MeshNode]{
		empty:      func() *v1alpha1.MeshNode { return &v1alpha1.MeshNode{} },
		sameSpec:   func(a, b *v1alpha1.MeshNode) bool { return equality.Semantic.DeepEqual(a.Spec, b.Spec) },
		sameStatus: func(a, b *v1alpha1.MeshNode) bool { return equality.Semantic.DeepEqual(a.Status, b.Status) },
		withSpec: func(cur, want *v1alpha1.MeshNode) *v1alpha1.MeshNode {
			n := cur.DeepCopy()
			n.Spec = want.Spec
			return n
		},
		withStatus: func(cur, want *v1alpha1.MeshNode) *v1alpha1.MeshNode {
			n := cur.DeepCopy()
			n.Status = want.Status
			return n
		},
	})
}

// viewObject is a MeshIdentity or a MeshNode.
type viewObject interface {
	runtime.Object
	metav1.Object
}

// viewOps are what syncViews needs to know of a view kind.
type viewOps[O viewObject] struct {
	empty                func() O
	sameSpec, sameStatus func(cur, want O) bool
	// withSpec and withStatus return a copy of cur with want's spec or
	// status.
	withSpec, withStatus func(cur, want O) O
}

// syncViews writes the difference between the cluster-scoped objects
// have and the objects want.
func syncViews[O viewObject](ctx context.Context, c *Client, resource, kind string, want, have []O, ops viewOps[O]) (SyncResult, error) {
	var (
		res    SyncResult
		errs   []error
		byName = make(map[string]O, len(have))
		wanted = make(map[string]bool, len(want))
	)
	for _, o := range have {
		byName[o.GetName()] = o
	}
	for _, w := range want {
		name := w.GetName()
		if wanted[name] {
			errs = append(errs, fmt.Errorf("%w: %s %s given twice; the first is kept", ErrDuplicate, kind, name))
			continue
		}
		wanted[name] = true
		cur, ok := byName[name]
		if !ok {
			// The API server drops status on create when the resource
			// has a status subresource: write it next. If that fails,
			// the next sync finds the status different and writes it.
			created := ops.empty()
			if err := c.create(ctx, resource, "", w, created); err != nil {
				errs = append(errs, fmt.Errorf("create %s %s: %w", kind, name, rbacHint(err)))
				continue
			}
			res.Created++
			if !ops.sameStatus(created, w) {
				if err := c.update(ctx, resource, "", name, true, ops.withStatus(created, w), created); err != nil {
					errs = append(errs, fmt.Errorf("write %s %s status: %w", kind, name, rbacHint(err)))
				}
			}
			continue
		}
		wrote := false
		if !ops.sameSpec(cur, w) {
			next := ops.empty()
			if err := c.update(ctx, resource, "", name, false, ops.withSpec(cur, w), next); err != nil {
				errs = append(errs, fmt.Errorf("update %s %s: %w", kind, name, rbacHint(err)))
				continue
			}
			cur, wrote = next, true
			res.Updated++
		}
		if !ops.sameStatus(cur, w) {
			if err := c.update(ctx, resource, "", name, true, ops.withStatus(cur, w), ops.empty()); err != nil {
				errs = append(errs, fmt.Errorf("write %s %s status: %w", kind, name, rbacHint(err)))
				continue
			}
			wrote = true
			res.StatusUpdated++
		}
		if !wrote {
			res.Unchanged++
		}
	}
	for _, o := range have {
		if wanted[o.GetName()] {
			continue
		}
		// The UID precondition keeps a delete from removing an object
		// of the same name created since the list; one already gone is
		// no error.
		switch err := c.delete(ctx, resource, "", o.GetName(), o.GetUID()); {
		case err == nil:
			res.Deleted++
		case apierrors.IsNotFound(err):
		default:
			errs = append(errs, fmt.Errorf("delete %s %s: %w", kind, o.GetName(), rbacHint(err)))
		}
	}
	return res, errors.Join(errs...)
}

// identityObject is the MeshIdentity that shows id.
func identityObject(id Identity) *v1alpha1.MeshIdentity {
	obj := &v1alpha1.MeshIdentity{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: v1alpha1.KindMeshIdentity},
		ObjectMeta: metav1.ObjectMeta{Name: strconv.FormatUint(uint64(id.ID), 10)},
		Spec:       v1alpha1.MeshIdentitySpec{ID: int64(id.ID)},
	}
	for _, l := range id.Labels.Labels() {
		obj.Spec.Labels = append(obj.Spec.Labels, l.String())
	}
	obj.Spec.Namespace, _ = id.Labels.Get(policy.SourceK8s, policy.LabelNamespace)
	nodes := slices.Clone(id.Nodes)
	slices.Sort(nodes)
	nodes = slices.Compact(nodes)
	if len(nodes) > 0 {
		obj.Status.Nodes = nodes
	}
	obj.Status.References = int32(len(nodes))
	return obj
}

// nodeObject is the MeshNode that shows n.
func nodeObject(n Node) *v1alpha1.MeshNode {
	obj := &v1alpha1.MeshNode{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: v1alpha1.KindMeshNode},
		ObjectMeta: metav1.ObjectMeta{Name: n.Name},
		Status: v1alpha1.MeshNodeStatus{
			Health:         n.Health,
			Agent:          n.Agent,
			AgentVersion:   n.AgentVersion,
			PolicyRevision: n.PolicyRevision,
		},
	}
	if obj.Status.Health == "" {
		obj.Status.Health = v1alpha1.HealthUnknown
	}
	for _, a := range n.Addresses {
		obj.Spec.Addresses = append(obj.Spec.Addresses, a.String())
	}
	for _, p := range n.PodCIDRs {
		obj.Spec.PodCIDRs = append(obj.Spec.PodCIDRs, p.String())
	}
	return obj
}
