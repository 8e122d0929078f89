package controlplane

import (
	"slices"
	"strings"

	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// stores open each kind's etcd store for a term.
type stores struct {
	pods       func(*term) store[pod.Pod]
	namespaces func(*term) store[pod.Namespace]
	services   func(*term) store[service.Service]
	policies   func(*term) store[*policy.Policy]
	members    func(*term) store[node.Member]
}

// The codecs of the kinds.
var (
	podCodec = codec[pod.Pod]{
		key: pod.Pod.Key,
		// pods/<node>/<namespace>/<name> holds the object <namespace>/<name>.
		object: func(key string) string {
			if _, rest, ok := strings.Cut(key, "/"); ok {
				return rest
			}
			return key
		},
		encode: pod.Pod.Encode,
	}
	namespaceCodec = codec[pod.Namespace]{key: pod.Namespace.Key, object: sameKey, encode: pod.Namespace.Encode}
	serviceCodec   = codec[service.Service]{key: service.Service.Key, object: sameKey, encode: service.Service.Encode}
	policyCodec    = codec[*policy.Policy]{key: (*policy.Policy).Key, object: sameKey, encode: (*policy.Policy).Encode}
	memberCodec    = codec[node.Member]{key: node.Member.Key, object: sameKey, encode: node.Member.Encode}
)

// reconcilers are one per kind the source provides, each with its queue
// from qs.
func newReconcilers(k Kinds, st stores, qs map[Kind]*queue, m *metrics, cfg *Config) []kindReconciler {
	var rs []kindReconciler
	if k.Namespaces != nil {
		rs = append(rs, newReconciler(KindNamespace, k.Namespaces, st.namespaces, namespaceCodec, qs[KindNamespace], m, cfg))
	}
	if k.Pods != nil {
		rs = append(rs, newReconciler(KindPod, k.Pods, st.pods, podCodec, qs[KindPod], m, cfg))
	}
	if k.Services != nil {
		rs = append(rs, newReconciler(KindService, k.Services, st.services, serviceCodec, qs[KindService], m, cfg))
	}
	if k.Policies != nil {
		rs = append(rs, newReconciler(KindPolicy, k.Policies, st.policies, policyCodec, qs[KindPolicy], m, cfg))
	}
	if k.Nodes != nil {
		rs = append(rs, newReconciler(KindNode, k.Nodes, st.members, memberCodec, qs[KindNode], m, cfg))
	}
	// The queues of the kinds the source does not provide would only grow.
	for kind, q := range qs {
		if !slices.ContainsFunc(rs, func(r kindReconciler) bool { return r.kind() == kind }) {
			q.close()
		}
	}
	return rs
}
