package nodeagent

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/node"
)

// startGossip binds the node's gossip endpoint. Members' state changes go
// to the mirror (a dead node's routes and backends leave the datapath) and
// to the metrics.
func (a *Agent) startGossip() (*health.Gossip, error) {
	port := a.cfg.GossipPort
	if port == -1 {
		port = 0
	}
	cfg := health.Config{
		Name:     a.cfg.Node,
		BindAddr: a.cfg.GossipAddr.String(),
		BindPort: port,
		Keys:     a.cfg.GossipKeys,
		Insecure: a.cfg.GossipInsecure,
		Meta:     health.Meta{Cluster: a.cfg.Cluster, Version: Version},
		Timing:   a.cfg.Gossip,
		Logger:   a.log.With("subsys", "gossip"),
		Notify: func(m health.Member) {
			if m.Name == a.cfg.Node {
				return
			}
			level := slog.LevelInfo
			if m.State == health.Unresponsive {
				// A death gossip declared that the node's kernel
				// contradicts: its agent is stalled or starved.
				level = slog.LevelWarn
			}
			a.log.Log(context.Background(), level, "node health", "node", m.Name, "state", m.State.String(), "addr", m.Addr)
			a.mirror.setHealth(nodeRef{a.cfg.Cluster, m.Name}, m.State)
		},
	}
	return health.New(cfg)
}

// gossipAnnounceTimeout bounds how long a graceful shutdown waits for its
// restart announcement or leave to go out.
const gossipAnnounceTimeout = 2 * time.Second

// closeGossip ends this node's gossip on a graceful shutdown. By default
// it announces a restart first, so the other nodes read this node as
// restarting and keep its routes and backends for their restart grace;
// with LeaveOnShutdown it leaves for good, and they take them out at once.
func (a *Agent) closeGossip(g *health.Gossip) error {
	if a.cfg.LeaveOnShutdown {
		if err := g.Leave(gossipAnnounceTimeout); err != nil {
			a.log.Warn("gossip leave not confirmed; the other nodes may see this node dead instead of left", "err", err)
		} else {
			a.log.Info("left the cluster's gossip for good")
		}
	} else if err := g.AnnounceRestart(gossipAnnounceTimeout); err != nil {
		a.log.Warn("restart announcement not confirmed; nodes that missed it see this node dead until it is back", "err", err)
	} else {
		a.log.Info("announced a restart to the cluster's gossip")
	}
	return g.Close()
}

// joinLoop joins gossip through the node records in etcd: there is no
// static peer list. When a node record appears, and every second, it looks
// for registered nodes that gossip does not know at all and joins through a
// few of them; that also heals two groups that formed apart (both started
// alone).
func (a *Agent) joinLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	g := a.gossip.Load()
	for {
		seeds := a.seeds(g, 3)
		if len(seeds) > 0 {
			jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			n, err := g.Join(jctx, seeds)
			cancel()
			if err != nil && ctx.Err() == nil {
				a.log.Debug("gossip join failed", "seeds", seeds, "joined", n, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.mirror.nodeChanged:
		}
	}
}

// seeds returns up to n gossip addresses of registered nodes that gossip
// does not know.
func (a *Agent) seeds(g *health.Gossip, n int) []string {
	nodes := a.nodesC.Load()
	if nodes == nil {
		return nil
	}
	var out []string
	nodes.Range(func(name string, r node.Record) bool {
		if name == a.cfg.Node || r.GossipAddr == "" {
			return true
		}
		if _, known := g.Member(name); known {
			return true
		}
		if _, err := netip.ParseAddrPort(r.GossipAddr); err != nil {
			return true
		}
		out = append(out, r.GossipAddr)
		return len(out) < n
	})
	return out
}
