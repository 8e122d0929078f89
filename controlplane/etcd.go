package controlplane

import (
	"context"
	"strings"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// TEMPORARY until kvstore.Store and kvstore.Campaign land: unfenced
// writes, one key at a time, and a leadership that never ends.

type clientStore[T any] struct {
	c      *kvstore.Client
	prefix string
	decode func(key string, value []byte) (T, error)
	codec  codec[T]
}

func (s clientStore[T]) List(ctx context.Context) ([]stored[T], error) {
	kvs, _, err := s.c.List(ctx, s.prefix)
	if err != nil {
		return nil, err
	}
	out := make([]stored[T], 0, len(kvs))
	for _, kv := range kvs {
		k := strings.TrimPrefix(kv.Key, s.prefix)
		v, err := s.decode(k, kv.Value)
		out = append(out, stored[T]{Key: k, Value: v, Err: err})
	}
	return out, nil
}

func (s clientStore[T]) Txn(ctx context.Context, puts []T, deletes []string) error {
	for _, v := range puts {
		b, err := s.codec.encode(v)
		if err != nil {
			return err
		}
		if err := s.c.Put(ctx, s.prefix+s.codec.key(v), b); err != nil {
			return err
		}
	}
	for _, k := range deletes {
		if err := s.c.Delete(ctx, s.prefix+k); err != nil {
			return err
		}
	}
	return nil
}

type foreverLeader struct{ ctx context.Context }

func (l foreverLeader) Context() context.Context   { return l.ctx }
func (foreverLeader) Resign(context.Context) error { return nil }

func (cp *ControlPlane) bindEtcd() {
	c, k := cp.cfg.Client, cp.keys
	cp.stores = stores{
		pods: func(*term) store[pod.Pod] {
			return clientStore[pod.Pod]{c, k.PodsPrefix(), pod.Decode, podCodec}
		},
		namespaces: func(*term) store[pod.Namespace] {
			return clientStore[pod.Namespace]{c, k.NamespacesPrefix(), pod.DecodeNamespace, namespaceCodec}
		},
		services: func(*term) store[service.Service] {
			return clientStore[service.Service]{c, k.ServicesPrefix(), service.Decode, serviceCodec}
		},
		policies: func(*term) store[*policy.Policy] {
			return clientStore[*policy.Policy]{c, k.PoliciesPrefix(), func(_ string, b []byte) (*policy.Policy, error) { return policy.Decode(b) }, policyCodec}
		},
	}
	cp.campaign = func(ctx context.Context) (leadership, error) { return foreverLeader{ctx}, nil }
}
