package cli

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/labels"
)

// agent is one node's identity machinery, as the node agent has it: a
// session (the node's lease, on which its references ride) and an
// allocator. `identity allocate` is an agent for the length of one command;
// bench and demo simulate several nodes with one agent each.
//
// The allocator's Run goroutine belongs to the agent; stop ends it.
type agent struct {
	node       string
	client     *kvstore.Client
	ownsClient bool // stop closes client
	session    *kvstore.Session
	alloc      *allocator.Allocator

	cancel   context.CancelFunc
	done     chan error // Run's result
	stopOnce sync.Once
	stopErr  error
}

type agentConfig struct {
	cluster    string
	clusterID  int
	node       string
	maxBatch   int           // 0: the allocator's default
	sessionTTL time.Duration // 0: kvstore.DefaultSessionTTL
}

// startAgent opens a session on client and starts an allocator with the
// default label filter. With ownsClient, stop (or a failed start) closes
// client too.
func startAgent(ctx context.Context, client *kvstore.Client, ownsClient bool, cfg agentConfig) (*agent, error) {
	fail := func(err error) (*agent, error) {
		if ownsClient {
			_ = client.Close()
		}
		return nil, err
	}
	filter, err := labels.NewFilter(labels.DefaultFilterPatterns())
	if err != nil {
		return fail(err)
	}
	session, err := kvstore.NewSession(ctx, client, kvstore.SessionConfig{TTL: cfg.sessionTTL})
	if err != nil {
		return fail(err)
	}
	alloc, err := allocator.New(allocator.Config{
		Cluster:   cfg.cluster,
		ClusterID: identity.ClusterID(cfg.clusterID),
		Node:      cfg.node,
		Filter:    filter,
		MaxBatch:  cfg.maxBatch,
	}, client, session)
	if err != nil {
		_ = session.Close()
		return fail(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	ag := &agent{
		node: cfg.node, client: client, ownsClient: ownsClient, session: session, alloc: alloc,
		cancel: cancel, done: make(chan error, 1),
	}
	go func() { ag.done <- alloc.Run(rctx) }()
	return ag, nil
}

// stop ends the allocator, then closes the session, which revokes the
// lease and with it every reference the node held, as when a node agent
// shuts down. The identities stay until GC collects them. Idempotent.
func (ag *agent) stop() error {
	ag.stopOnce.Do(func() {
		ag.cancel()
		err := <-ag.done
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("%s: identity allocator: %w", ag.node, err)
		}
		if serr := ag.session.Close(); serr != nil {
			err = errors.Join(err, fmt.Errorf("%s: %w", ag.node, serr))
		}
		if ag.ownsClient {
			if cerr := ag.client.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("%s: close etcd client: %w", ag.node, cerr))
			}
		}
		ag.stopErr = err
	})
	return ag.stopErr
}

// stopAgents stops agents concurrently; nil entries (agents that never
// started) are skipped.
func stopAgents(agents []*agent) error {
	errs := make([]error, len(agents))
	var wg sync.WaitGroup
	for i, ag := range agents {
		if ag != nil {
			wg.Go(func() { errs[i] = ag.stop() })
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}
