package controlplane

import (
	"context"
	"errors"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/pod"
)

// fenced is a kind's kvstore.Store whose writes carry the term's fence:
// a write after the term ended changes nothing and returns ErrNotLeader.
type fenced[T any] struct {
	s     *kvstore.Store[T]
	fence kvstore.Condition
}

func (f fenced[T]) List(ctx context.Context) ([]stored[T], error) {
	items, _, err := f.s.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]stored[T], len(items))
	for i, it := range items {
		out[i] = stored[T]{Key: it.Key, Value: it.Value, Err: it.Err}
	}
	return out, nil
}

func (f fenced[T]) Txn(ctx context.Context, puts []T, deletes []string) error {
	err := f.s.Txn(ctx, puts, deletes, kvstore.WithCondition(f.fence))
	if errors.Is(err, kvstore.ErrConditionFailed) {
		return errors.Join(ErrNotLeader, err)
	}
	return err
}

func open[T any](s *kvstore.Store[T]) func(*term) store[T] {
	return func(t *term) store[T] { return fenced[T]{s: s, fence: t.lead.Condition()} }
}

// The codecs of the kinds whose etcd side kvstore does not (yet) own.
var (
	podStoreCodec = kvstore.Codec[pod.Pod]{
		Decode: kvstore.CheckKey("pod", pod.Decode, pod.Pod.Key),
		Encode: pod.Pod.Encode,
		Key:    pod.Pod.Key,
	}
	memberStoreCodec = kvstore.Codec[node.Member]{
		Decode: kvstore.CheckKey("member", node.DecodeMember, node.Member.Key),
		Encode: node.Member.Encode,
		Key:    node.Member.Key,
	}
	namespaceStoreCodec = kvstore.Codec[pod.Namespace]{
		Decode: kvstore.CheckKey("namespace", pod.DecodeNamespace, pod.Namespace.Key),
		Encode: pod.Namespace.Encode,
		Key:    pod.Namespace.Key,
	}
)

// bindEtcd makes the stores of every kind.
func (cp *ControlPlane) bindEtcd() {
	c, k := cp.cfg.Client, cp.keys
	cp.stores = stores{
		pods:       open(kvstore.NewStore(c, k.PodsPrefix(), podStoreCodec)),
		namespaces: open(kvstore.NewStore(c, k.NamespacesPrefix(), namespaceStoreCodec)),
		services:   open(kvstore.ServiceStore(c, k)),
		policies:   open(kvstore.PolicyStore(c, k)),
		members:    open(kvstore.NewStore(c, k.MembersPrefix(), memberStoreCodec)),
	}
	cp.campaign = func(ctx context.Context) (leadership, error) {
		l, err := kvstore.Campaign(ctx, c, k.Leader(electionName), kvstore.ElectionConfig{Value: cp.cfg.Name, TTL: cp.cfg.LeaseTTL})
		if err != nil {
			return nil, err
		}
		return l, nil
	}
}

// electionName is the control plane's election (Keys.Leader).
const electionName = "controlplane"
