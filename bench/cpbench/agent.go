package cpbench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/nodeagent"
)

// benchAgent is the node agent of node 0, in this process, with the
// "none" datapath: its maps are real, no programs are attached.
type benchAgent struct {
	cfg    nodeagent.Config
	a      *nodeagent.Agent
	eps    *bpf.Map[bpf.EndpointKey, bpf.EndpointValue]
	cancel context.CancelFunc
	done   chan error
}

// agentEndpoint is an endpoint the bench added, and its first identity.
type agentEndpoint struct {
	ip       netip.Addr
	identity uint32
}

// ErrNoBPF is returned when the agent cannot have its maps (not root, no
// bpffs): run as root or without the agent.
var ErrNoBPF = errors.New("cpbench: the agent needs eBPF maps (run as root), or run without it")

func startAgent(ctx context.Context, r *run) (*benchAgent, error) {
	if _, err := bpf.MountFS(bpf.DefaultDir); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoBPF, err)
	}
	if err := bpf.CheckSupport(bpf.DefaultDir); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoBPF, err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	node := r.nodes[0]
	cfg := nodeagent.Config{
		Node: node, Cluster: r.cluster, ClusterID: 1, Etcd: r.etcd.Config(),
		StateDir:   filepath.Join(r.dir, "agent"),
		NodeIPs:    []netip.Addr{netip.MustParseAddr("127.0.9.1")},
		GossipAddr: netip.MustParseAddr("127.0.0.1"), GossipPort: -1, GossipKeys: [][]byte{key},
		APISocket: filepath.Join(r.dir, "agent.sock"), APISocketGroup: -1,
		Datapath: nodeagent.DatapathNone, RoutingMode: nodeagent.RoutingNone,
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("cpbench: agent: %w", err)
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ba := &benchAgent{cfg: cfg, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ba.done <- a.Run(actx) }()
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for a.Status().State != nodeagent.StateOK {
		select {
		case <-wctx.Done():
			st := a.Status()
			return nil, errors.Join(fmt.Errorf("cpbench: agent not ok: %s %v: %w", st.State, st.Reasons, wctx.Err()), ba.stop())
		case err := <-ba.done:
			ba.cancel = nil
			return nil, errors.Join(fmt.Errorf("cpbench: agent exited: %w", err), bpf.RemovePins(bpf.Config{Node: node}))
		case <-t.C:
		}
	}
	ba.eps, err = bpf.OpenPinned[bpf.EndpointKey, bpf.EndpointValue](filepath.Join(bpf.Config{Node: node}.PinDir(), bpf.EndpointsMapName))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("cpbench: agent's endpoints map: %w", err), ba.stop())
	}
	return ba, nil
}

// stop stops the agent and removes its pins; it is idempotent.
func (ba *benchAgent) stop() error {
	if ba.cancel == nil {
		return nil
	}
	ba.cancel()
	ba.cancel = nil
	var err error
	select {
	case err = <-ba.done:
		if errors.Is(err, context.Canceled) {
			err = nil
		}
	case <-time.After(30 * time.Second):
		err = fmt.Errorf("cpbench: agent %s did not stop within 30s", ba.cfg.Node)
	}
	if ba.eps != nil {
		err = errors.Join(err, ba.eps.Close())
	}
	return errors.Join(err, bpf.RemovePins(bpf.Config{Node: ba.cfg.Node}))
}

// addEndpoints adds an endpoint, as the CNI plugin would, for each of the
// first n pods of node 0 (pods 0, Nodes, 2×Nodes, ...), and waits until
// each is in the endpoints map with its identity.
func (ba *benchAgent) addEndpoints(ctx context.Context, r *run, n int) ([]agentEndpoint, error) {
	var out []agentEndpoint
	for j := range n {
		ns, name := r.podName(j * r.cfg.Nodes)
		ep, err := ba.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: ns, Pod: name, IfIndex: uint32(j + 1)})
		if err != nil {
			return nil, fmt.Errorf("cpbench: add endpoint %s/%s: %w", ns, name, err)
		}
		if len(ep.IPs) == 0 {
			return nil, fmt.Errorf("cpbench: endpoint %s/%s has no IP", ns, name)
		}
		out = append(out, agentEndpoint{ip: ep.IPs[0], identity: uint32(ep.Identity)})
	}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for _, ep := range out {
		for {
			id, err := ba.identity(ep.ip)
			if err != nil {
				return nil, err
			}
			if id != 0 && id == ep.identity {
				break
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("cpbench: endpoint %s not in the endpoints map with identity %d (has %d): %w", ep.ip, ep.identity, id, ctx.Err())
			case <-t.C:
			}
		}
	}
	return out, nil
}

// identity reads the endpoint's identity from the pinned endpoints map, as
// the datapath sees it; 0 when it is not there.
func (ba *benchAgent) identity(ip netip.Addr) (uint32, error) {
	v, ok, err := ba.eps.Lookup(bpf.EndpointKeyFor(ip))
	if err != nil {
		return 0, fmt.Errorf("cpbench: endpoints map: %w", err)
	}
	if !ok {
		return 0, nil
	}
	return v.Identity, nil
}
