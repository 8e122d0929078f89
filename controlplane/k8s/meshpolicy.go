package k8s

import (
	"context"
	"fmt"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/policy"
)

// MeshPolicyFrom converts a MeshNetworkPolicy by handing its manifest
// (v1alpha1's Document) to policy.Parse, as `meshctl policy apply` does.
// A policy Parse rejects is returned as a *PolicyError.
func MeshPolicyFrom(mp *v1alpha1.MeshNetworkPolicy) (*policy.Policy, error) {
	b, err := mp.Document()
	if err != nil {
		return nil, fmt.Errorf("MeshNetworkPolicy %s/%s: %w", mp.Namespace, mp.Name, err)
	}
	ps, err := policy.Parse(b)
	if err != nil {
		return nil, &PolicyError{Kind: v1alpha1.KindMeshNetworkPolicy, Namespace: mp.Namespace, Name: mp.Name, FieldErrors: fieldErrors(err), Err: err}
	}
	if len(ps) != 1 {
		return nil, fmt.Errorf("MeshNetworkPolicy %s/%s: parsed to %d policies", mp.Namespace, mp.Name, len(ps))
	}
	return ps[0], nil
}

// policyLister is the Policies lister: NetworkPolicies and
// MeshNetworkPolicies share the key space (policies/<namespace>/<name>).
// Every verdict on a MeshNetworkPolicy, valid or not, is queued for its
// Accepted condition.
type policyLister struct{ s *Source }

func (l policyLister) Keys() []string {
	keys := append(l.s.policies.GetStore().ListKeys(), l.s.meshPolicies.GetStore().ListKeys()...)
	slices.Sort(keys)
	return slices.Compact(keys)
}

func (l policyLister) Get(key string) (*policy.Policy, bool, error) {
	npObj, npOK, err := l.s.policies.GetStore().GetByKey(key)
	if err != nil {
		return nil, false, err
	}
	mpObj, mpOK, err := l.s.meshPolicies.GetStore().GetByKey(key)
	if err != nil {
		return nil, false, err
	}
	switch {
	case npOK && mpOK:
		mp := mpObj.(*v1alpha1.MeshNetworkPolicy)
		err := fmt.Errorf("a NetworkPolicy and a MeshNetworkPolicy are both named %s: they share policies/%s in etcd, so neither is enforced; rename or delete one", key, key)
		l.s.verdicts.add(key, mp, err)
		return nil, true, err
	case mpOK:
		mp := mpObj.(*v1alpha1.MeshNetworkPolicy)
		p, err := MeshPolicyFrom(mp)
		l.s.verdicts.add(key, mp, err)
		return p, true, err
	case npOK:
		p, err := PolicyFrom(npObj.(*networkingv1.NetworkPolicy))
		if err == nil {
			l.s.reports.valid(controlplane.KindPolicy, key)
		}
		return p, true, err
	}
	return nil, false, nil
}

// verdicts are the MeshNetworkPolicy verdicts waiting to be written (the
// Accepted condition, and an Event for an invalid one), coalesced by key:
// the lister adds without blocking, Run's goroutine writes them.
type verdicts struct {
	ready chan struct{}

	mu      sync.Mutex // mu guards pending
	pending map[string]verdict
}

type verdict struct {
	obj *v1alpha1.MeshNetworkPolicy
	err error
}

func newVerdicts() *verdicts {
	return &verdicts{ready: make(chan struct{}, 1), pending: map[string]verdict{}}
}

func (v *verdicts) add(key string, obj *v1alpha1.MeshNetworkPolicy, err error) {
	v.mu.Lock()
	v.pending[key] = verdict{obj: obj, err: err}
	v.mu.Unlock()
	select {
	case v.ready <- struct{}{}:
	default:
	}
}

func (v *verdicts) take() map[string]verdict {
	v.mu.Lock()
	defer v.mu.Unlock()
	p := v.pending
	v.pending = map[string]verdict{}
	return p
}

// verdictLoop writes the queued verdicts until ctx ends. The writer skips
// a verdict the object's status already holds, so a resync costs no
// requests. One that fails is dropped: the next reconcile of the policy
// (at the latest the next resync) queues it again.
func (s *Source) verdictLoop(ctx context.Context, w *crd.Writer) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.verdicts.ready:
		}
		for _, v := range s.verdicts.take() {
			_ = w.ReportMeshNetworkPolicy(ctx, v.obj, v.err)
		}
	}
}

// WriteViews makes the MeshIdentity and MeshNode objects match v
// (controlplane.ViewWriter). The health of a MeshNode is unknown: the
// control plane does not join gossip.
func (s *Source) WriteViews(ctx context.Context, v controlplane.Views) error {
	select {
	case <-s.started:
	default:
		return fmt.Errorf("k8s: WriteViews before Run")
	}
	ids := make([]crd.Identity, len(v.Identities))
	for i, id := range v.Identities {
		ids[i] = crd.Identity{ID: id.ID, Labels: id.Labels, Nodes: id.Nodes}
	}
	nodes := make([]crd.Node, len(v.Nodes))
	for i, r := range v.Nodes {
		nodes[i] = crd.NodeFromRecord(r, "")
	}
	if _, err := s.writer.SyncIdentities(ctx, ids); err != nil {
		return err
	}
	_, err := s.writer.SyncNodes(ctx, nodes)
	return err
}

// member is a Node's membership.
func member(obj any) (node.Member, bool, error) {
	m := node.Member(NodeFrom(obj.(*corev1.Node)))
	return m, true, m.Validate()
}
