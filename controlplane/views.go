package controlplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/node"
)

// ViewWriter is an optional capability of a Source: it publishes the
// leader's view of what the agents keep in etcd where operators look
// (controlplane/k8s: the MeshIdentity and MeshNode objects, `kubectl get
// meshidentities`). The leader calls WriteViews from one goroutine of its
// term, once its caches of etcd are synced, after every change to them
// (changes that come while a call runs are coalesced into the next call)
// and every Config.ViewInterval; ctx ends with the term, and a failed call
// is retried with backoff. WriteViews makes the published views match v
// (level-triggered: deleting what v lacks); v is the callee's.
type ViewWriter interface {
	WriteViews(ctx context.Context, v Views) error
}

// Views is the state the leader publishes.
type Views struct {
	// Identities are the allocated identities (identities/id/), sorted
	// by ID, each with the nodes whose references (identities/refs/) are
	// in etcd.
	Identities []IdentityView
	// Nodes are the agents' node records (nodes/), sorted by name. The
	// control plane does not join gossip: the health it knows is only
	// that a record exists.
	Nodes []node.Record
}

// IdentityView is one identity and the nodes that use it.
type IdentityView struct {
	ID     identity.ID
	Labels labels.Set
	Nodes  []string // sorted
}

// poker is a kvstore.Handler that signals a channel, without blocking,
// on every change.
type poker chan struct{}

func (p poker) poke() {
	select {
	case p <- struct{}{}:
	default:
	}
}
func (p poker) Upsert(string, struct{}) { p.poke() }
func (p poker) Delete(string)           { p.poke() }

// viewCaches mirror the prefixes the views come from.
type viewCaches struct {
	ids   *kvstore.Cache[labels.Set]
	refs  *kvstore.Cache[struct{}]
	nodes *kvstore.Cache[node.Record]
}

// publishViews keeps w's views current until ctx (the term) ends: three
// caches of etcd (identities/id/, identities/refs/, nodes/) whose changes
// trigger a WriteViews, and a ticker that repeats it every ViewInterval
// to undo edits made from outside. It returns ctx's error.
func (cp *ControlPlane) publishViews(ctx context.Context, w ViewWriter) error {
	changed := make(poker, 1)
	vc, err := cp.newViewCaches(changed)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return vc.ids.Run(ctx) })
	g.Go(func() error { return vc.refs.Run(ctx) })
	g.Go(func() error { return vc.nodes.Run(ctx) })
	g.Go(func() error {
		for _, d := range []<-chan struct{}{vc.ids.Delivered(), vc.refs.Delivered(), vc.nodes.Delivered()} {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-d:
			}
		}
		tick := time.NewTicker(cp.cfg.ViewInterval)
		defer tick.Stop()
		b := newBackoff()
		for {
			if err := w.WriteViews(ctx, vc.views()); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				cp.m.failed.WithLabelValues("views").Inc()
				cp.cfg.Logger.Warn("publishing the views failed, retrying", "error", err)
				if !b.wait(ctx) {
					return ctx.Err()
				}
				continue
			}
			b.reset()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-changed:
			case <-tick.C:
			}
		}
	})
	err = g.Wait()
	if ctx.Err() != nil {
		return nil // the term ended: not the control plane's end
	}
	return err
}

func (cp *ControlPlane) newViewCaches(changed poker) (viewCaches, error) {
	c, k := cp.cfg.Client, cp.keys
	ids, err := kvstore.NewCache(c, kvstore.CacheConfig[labels.Set]{Prefix: k.IdentityIDPrefix(), Decode: allocator.DecodeIdentity})
	if err != nil {
		return viewCaches{}, fmt.Errorf("views: %w", err)
	}
	refs, err := kvstore.NewCache(c, kvstore.CacheConfig[struct{}]{Prefix: k.IdentityRefsPrefix(), Decode: func(key string, _ []byte) (struct{}, error) {
		if hash, n, ok := strings.Cut(key, "/"); !ok || hash == "" || n == "" {
			return struct{}{}, errors.New("identity reference key is not <hash>/<node>")
		}
		return struct{}{}, nil
	}})
	if err != nil {
		return viewCaches{}, fmt.Errorf("views: %w", err)
	}
	nodes, err := kvstore.NewCache(c, kvstore.CacheConfig[node.Record]{Prefix: k.NodesPrefix(), Decode: node.Decode})
	if err != nil {
		return viewCaches{}, fmt.Errorf("views: %w", err)
	}
	ids.Subscribe(handlerOf[labels.Set](changed))
	refs.Subscribe(changed)
	nodes.Subscribe(handlerOf[node.Record](changed))
	return viewCaches{ids: ids, refs: refs, nodes: nodes}, nil
}

// handlerOf adapts a poker to a cache of any value type.
type handlerOf[T any] poker

func (h handlerOf[T]) Upsert(string, T) { poker(h).poke() }
func (h handlerOf[T]) Delete(string)    { poker(h).poke() }

// views computes the views from the caches.
func (vc viewCaches) views() Views {
	users := map[string][]string{} // label hash → nodes
	vc.refs.Range(func(key string, _ struct{}) bool {
		hash, n, _ := strings.Cut(key, "/")
		users[hash] = append(users[hash], n)
		return true
	})
	var v Views
	vc.ids.Range(func(key string, set labels.Set) bool {
		id, err := identity.Parse(key)
		if err != nil {
			return true
		}
		nodes := users[set.Hash()]
		slices.Sort(nodes)
		v.Identities = append(v.Identities, IdentityView{ID: id, Labels: set, Nodes: nodes})
		return true
	})
	slices.SortFunc(v.Identities, func(a, b IdentityView) int { return cmp.Compare(a.ID, b.ID) })
	vc.nodes.Range(func(_ string, r node.Record) bool {
		v.Nodes = append(v.Nodes, r)
		return true
	})
	slices.SortFunc(v.Nodes, func(a, b node.Record) int { return strings.Compare(a.Name, b.Name) })
	return v
}
