package controlplane

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/kvstore"
)

// leadership is one term as leader (kvstore.Leadership).
type leadership interface {
	// Context ends when the term ends: lost, resigned, or its session gone.
	Context() context.Context
	// Condition is true while the term lasts: every write carries it.
	Condition() kvstore.Condition
	// Resign ends the term, so that another replica takes over at once.
	Resign(ctx context.Context) error
}

// term is one term as leader, as the reconcilers see it.
type term struct {
	lead leadership
}

// ControlPlane is the mesh-controlplane daemon: see the package doc.
type ControlPlane struct {
	cfg    Config
	keys   kvstore.Keys
	m      *metrics
	queues map[Kind]*queue
	stores stores
	// campaign campaigns with owns, the prefixes this replica's resyncs
	// own, in the leader key (LeaderInfo).
	campaign func(ctx context.Context, owns []string) (leadership, error)
	// leading is true during a term, terms counts them (for tests; the
	// metrics for people).
	leading atomic.Bool
	terms   atomic.Int64
}

// New validates cfg and returns a control plane; Run starts it.
func New(cfg Config) (*ControlPlane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cp := &ControlPlane{cfg: cfg, m: newMetrics(), queues: map[Kind]*queue{}}
	for _, k := range allKinds {
		cp.queues[k] = newQueue()
	}
	keys, err := kvstore.NewKeys(cfg.Cluster)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	cp.keys = keys
	cp.bindEtcd()
	return cp, nil
}

// notify is the Source's Notify: it queues the key on its kind's queue.
func (cp *ControlPlane) notify(kind Kind, key string) {
	q, ok := cp.queues[kind]
	if !ok {
		return
	}
	cp.m.events.WithLabelValues(kind.String()).Inc()
	q.add(key, cp.cfg.Clock.Now())
	cp.m.depth.WithLabelValues(kind.String()).Set(float64(q.len()))
}

// Run runs the control plane until ctx ends: the source's watches, and a
// loop that campaigns for leadership and, while it leads, runs the
// reconcilers and the garbage collectors under the term's context. A term
// that ends (the lease lost, etcd gone, another leader) stops every write
// at once (each write is fenced by the term, so a write racing the loss is
// refused by etcd) and the loop campaigns again. Run returns ctx's error
// after every goroutine it started has returned, or the first error that
// ends the control plane (the source's).
//
// Before it starts anything, Run checks etcd's cluster record (creating it
// when there is none): a record that names another cluster or ID, or does
// not decode, ends Run at once with an error that names the field and both
// values (a *cluster.MismatchError) or wraps cluster.ErrInvalid, and
// nothing is written.
func (cp *ControlPlane) Run(ctx context.Context) error {
	if err := cp.ensureCluster(ctx, true); err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	if cp.cfg.MetricsAddr != "" {
		if err := cp.m.serve(ctx, g, cp.cfg.MetricsAddr); err != nil {
			return err
		}
	}
	g.Go(func() error {
		if err := cp.cfg.Source.Run(ctx, cp.notify); err != nil && ctx.Err() == nil {
			return fmt.Errorf("source: %w", err)
		}
		return ctx.Err()
	})
	g.Go(func() error {
		if err := cp.cfg.Source.WaitSynced(ctx); err != nil {
			return fmt.Errorf("source: wait for the first full view: %w", err)
		}
		cp.cfg.Logger.Info("source synced")
		kinds := cp.cfg.Source.Kinds()
		rs := newReconcilers(kinds, cp.stores, cp.queues, cp.m, &cp.cfg)
		for ctx.Err() == nil {
			if err := cp.lead(ctx, rs, kinds); err != nil {
				return err
			}
		}
		return ctx.Err()
	})
	return g.Wait()
}

// lead campaigns, then runs one term. It returns nil when the term ended
// and the caller should campaign again, or an error that ends Run.
func (cp *ControlPlane) lead(ctx context.Context, rs []kindReconciler, kinds Kinds) error {
	cp.cfg.Logger.Info("campaigning for leadership", "name", cp.cfg.Name)
	l, err := cp.campaign(ctx, ownedPrefixes(kinds))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		cp.cfg.Logger.Warn("campaign failed, retrying", "error", err)
		b := newBackoff()
		b.d = time.Second
		b.wait(ctx)
		return nil
	}
	cp.cfg.Logger.Info("leading", "name", cp.cfg.Name)
	cp.m.leader.Set(1)
	cp.m.terms.Inc()
	cp.leading.Store(true)
	cp.terms.Add(1)
	defer func() {
		cp.leading.Store(false)
		cp.m.leader.Set(0)
	}()

	t := &term{lead: l}
	tctx, cancel := context.WithCancel(l.Context())
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	tg, tctx := errgroup.WithContext(tctx)
	for _, r := range rs {
		tg.Go(func() error { return r.runTerm(tctx, t) })
	}
	if cp.cfg.GCInterval > 0 {
		tg.Go(func() error { cp.collect(tctx, kinds.Pods); return nil })
	}
	if vw, ok := cp.cfg.Source.(ViewWriter); ok {
		tg.Go(func() error { return cp.publishViews(tctx, vw) })
	}
	err = tg.Wait()
	cancel()
	// Resign also after a loss: it releases the term's lease and watch. On
	// shutdown it hands over at once rather than after the TTL.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer rcancel()
	if rerr := l.Resign(rctx); rerr != nil && ctx.Err() != nil {
		cp.cfg.Logger.Warn("resign failed; another replica takes over after the lease TTL", "error", rerr)
	}
	if ctx.Err() == nil {
		cp.cfg.Logger.Warn("leadership lost; campaigning again", "error", err, "cause", context.Cause(l.Context()))
	}
	return nil
}

// SyncOnce makes etcd match the source once, without a daemon: it
// campaigns (waiting while another replica leads), runs one full resync of
// every kind the source provides (writing the difference, deleting what is
// gone), and resigns. It is for callers that own the desired state and
// change it in steps, such as the lab. The source's Run is not called; it
// must be synced already. It checks the cluster record first, as Run
// does, but returns etcd's errors instead of retrying. Not safe for
// concurrent use with Run on the same ControlPlane.
func (cp *ControlPlane) SyncOnce(ctx context.Context) error {
	if err := cp.ensureCluster(ctx, false); err != nil {
		return err
	}
	if err := cp.cfg.Source.WaitSynced(ctx); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	kinds := cp.cfg.Source.Kinds()
	rs := newReconcilers(kinds, cp.stores, cp.queues, cp.m, &cp.cfg)
	l, err := cp.campaign(ctx, ownedPrefixes(kinds))
	if err != nil {
		return fmt.Errorf("sync: campaign: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = l.Resign(rctx)
	}()
	t := &term{lead: l}
	tctx, cancel := context.WithCancel(l.Context())
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	var errs []error
	for _, r := range rs {
		if err := r.resyncTerm(tctx, t); err != nil {
			errs = append(errs, fmt.Errorf("sync %s: %w", r.kind(), err))
		}
	}
	return errors.Join(errs...)
}

// ensureCluster checks etcd's cluster record against Config.Cluster and
// ClusterID, creating it when there is none (kvstore.EnsureCluster). A
// record that disagrees or is corrupt is an error: the control plane must
// not write into another cluster's etcd, nor run its collectors over
// identities of another cluster ID. With retry, etcd trouble is retried
// until ctx ends (Run); without, it is returned (SyncOnce).
func (cp *ControlPlane) ensureCluster(ctx context.Context, retry bool) error {
	b := newBackoff()
	for {
		rec, created, err := kvstore.EnsureCluster(ctx, cp.cfg.Client, cp.keys, cp.cfg.ClusterID)
		var mismatch *cluster.MismatchError
		switch {
		case err == nil:
			if created {
				cp.cfg.Logger.Info("created the cluster record", "cluster", rec.Name, "clusterID", rec.ID)
			}
			return nil
		case errors.As(err, &mismatch), errors.Is(err, cluster.ErrInvalid):
			return fmt.Errorf("refusing to start: %w", err)
		case !retry || ctx.Err() != nil:
			return err
		}
		cp.cfg.Logger.Warn("cannot read the cluster record; retrying", "error", err)
		if !b.wait(ctx) {
			return ctx.Err()
		}
	}
}
