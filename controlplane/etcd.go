package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"slices"

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
	cp.campaign = func(ctx context.Context, owns []string) (leadership, error) {
		value := LeaderInfo{Name: cp.cfg.Name, Owns: owns}.encode()
		l, err := kvstore.Campaign(ctx, c, k.Leader(ElectionName), kvstore.ElectionConfig{Value: value, TTL: cp.cfg.LeaseTTL})
		if err != nil {
			return nil, err
		}
		return l, nil
	}
}

// ElectionName is the control plane's election: its leader key is
// Keys.Leader(ElectionName) + "/" + the lease, holding a LeaderInfo.
const ElectionName = "controlplane"

// LeaderInfo is what a control plane's leader key holds: who leads, and
// the prefixes its resyncs own (it writes them from its Source and
// deletes the keys there that its Source does not have). Other writers of
// such a prefix (meshctl policy apply on a cluster whose control plane
// reads Kubernetes NetworkPolicies) would see their keys deleted, so they
// ask Leader first.
type LeaderInfo struct {
	Name string   `json:"name"`
	Owns []string `json:"owns,omitempty"`
}

// OwnsPolicies reports whether the leader owns policies/.
func (i LeaderInfo) OwnsPolicies() bool { return slices.Contains(i.Owns, "policies") }

func (i LeaderInfo) encode() string {
	b, err := json.Marshal(i)
	if err != nil {
		return i.Name
	}
	return string(b)
}

// Leader returns the current leader of the cluster's control plane; the
// error wraps kvstore.ErrNoLeader when no replica leads. A leader key
// that is not a LeaderInfo (a candidate of an older version) gives its
// value as the Name, owning nothing known.
func Leader(ctx context.Context, c *kvstore.Client, keys kvstore.Keys) (LeaderInfo, error) {
	v, err := kvstore.Leader(ctx, c, keys.Leader(ElectionName))
	if err != nil {
		return LeaderInfo{}, err
	}
	var i LeaderInfo
	if json.Unmarshal([]byte(v), &i) != nil || i.Name == "" {
		return LeaderInfo{Name: v}, nil
	}
	return i, nil
}

// ownedPrefixes names the prefixes whose kinds the Source provides.
func ownedPrefixes(k Kinds) []string {
	var owns []string
	for _, o := range []struct {
		prefix string
		has    bool
	}{
		{"pods", k.Pods != nil}, {"namespaces", k.Namespaces != nil}, {"services", k.Services != nil},
		{"policies", k.Policies != nil}, {"members", k.Nodes != nil},
	} {
		if o.has {
			owns = append(owns, o.prefix)
		}
	}
	return owns
}
