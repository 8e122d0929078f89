package labbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/lab"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// rulesPerPolicy is how many ipBlock peers one policy of the rules holds:
// etcd values stay small (about 40 kB each).
const rulesPerPolicy = 1000

// How long the ebpf lab waits for the agents.
const (
	syncTimeout  = 3 * time.Minute // a Case's policies and services in the maps
	applyTimeout = 10 * time.Second
	syncPoll     = 50 * time.Millisecond
	applyPoll    = time.Millisecond
	applyPort    = 20000 // the first port of the timed applies
	allowClient  = "allow-client"
)

// ebpfLab is the lab whose agents run the eBPF datapath. Policies and
// services go to the cluster's etcd, as a control plane would write them;
// the pinned maps tell when the agents have them.
type ebpfLab struct {
	*bench
	etcd *kvstore.Client
	keys kvstore.Keys
	// policyMaps are every node's pinned policy map, by node name;
	// servicesMap is the client node's services map.
	policyMaps  map[string]*bpf.Map[bpf.PolicyKey, bpf.PolicyValue]
	servicesMap *bpf.Map[bpf.ServiceKey, bpf.ServiceValue]
	// written holds what etcd has under each policy name of the bench.
	written map[string][]byte
	// services is how many services etcd has.
	services int
	// byIPBlock: the client is allowed by an ipBlock of its address
	// (Config.AllowByIPBlock), so its entry is for a CIDR identity.
	byIPBlock bool
}

// newEBPFLab connects to the lab's etcd and opens the agents' pinned
// maps. It returns what it made even with an error, for close.
func newEBPFLab(ctx context.Context, b *bench, byIPBlock bool) (*ebpfLab, error) {
	e := &ebpfLab{bench: b, policyMaps: map[string]*bpf.Map[bpf.PolicyKey, bpf.PolicyValue]{}, written: map[string][]byte{}, byIPBlock: byIPBlock}
	var err error
	if e.keys, err = kvstore.NewKeys(cluster); err != nil {
		return nil, err
	}
	if e.etcd, err = kvstore.New(ctx, kvstore.Config{Endpoints: b.l.EtcdEndpoints(cluster), DialTimeout: 5 * time.Second}); err != nil {
		return nil, fmt.Errorf("ebpf lab: %w", err)
	}
	for _, n := range []string{node1, node2} {
		m, err := bpf.OpenPinned[bpf.PolicyKey, bpf.PolicyValue](e.pin(n, bpf.PolicyMapName))
		if err != nil {
			return e, fmt.Errorf("ebpf lab: %w", err)
		}
		e.policyMaps[n] = m
	}
	if e.servicesMap, err = bpf.OpenPinned[bpf.ServiceKey, bpf.ServiceValue](e.pin(b.client.Node, bpf.ServicesMapName)); err != nil {
		return e, fmt.Errorf("ebpf lab: %w", err)
	}
	return e, nil
}

// pin is the path of a node's pinned map.
func (e *ebpfLab) pin(node, name string) string {
	return filepath.Join(bpf.Config{Dir: e.l.BPFFS(cluster), Node: node}.PinDir(), name)
}

func (e *ebpfLab) name() string { return EnforcerEBPF }
func (e *ebpfLab) base() *bench { return e.bench }
func (e *ebpfLab) close() error {
	var errs []error
	for _, m := range e.policyMaps {
		errs = append(errs, m.Close())
	}
	if e.servicesMap != nil {
		errs = append(errs, e.servicesMap.Close())
	}
	if e.etcd != nil {
		errs = append(errs, e.etcd.Close())
	}
	return errors.Join(errs...)
}

// apply writes the Case's policies and services, then waits until the
// server node's policy map and the client node's services map hold them.
func (e *ebpfLab) apply(ctx context.Context, c Case) error {
	if err := e.writePolicies(ctx, c.Rules); err != nil {
		return err
	}
	prev, err := e.writeServices(ctx, c.Services)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if err := poll(ctx, syncPoll, func() (string, error) { return e.rulesMissing(c.Rules) }); err != nil {
		return fmt.Errorf("policy map of node %s: %w", e.server.Node, err)
	}
	if err := poll(ctx, syncPoll, func() (string, error) { return e.servicesMissing(c.Services, prev) }); err != nil {
		return fmt.Errorf("services map of node %s: %w", e.client.Node, err)
	}
	return nil
}

// serverPolicy is an ingress policy of the server on TCP 80 from peers.
func serverPolicy(name string, peers []policy.Peer) *policy.Policy {
	return &policy.Policy{
		Kind: policy.KindNetworkPolicy, Namespace: namespace, Name: name,
		Spec: policy.Spec{
			PodSelector: policy.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			PolicyTypes: []policy.Type{policy.TypeIngress},
			Ingress: []policy.IngressRule{{
				Ports: []policy.Port{{Protocol: policy.ProtocolTCP, Port: policy.PortNumber(echoPort)}},
				From:  peers,
			}},
		},
	}
}

// writePolicies makes etcd hold the client's allow and the rules in
// policies of rulesPerPolicy peers; only policies that change are written.
func (e *ebpfLab) writePolicies(ctx context.Context, rules int) error {
	peer := policy.Peer{PodSelector: &policy.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}
	if e.byIPBlock {
		peer = policy.Peer{IPBlock: &policy.IPBlock{CIDR: netip.PrefixFrom(e.client.IP, 32).String()}}
	}
	want := map[string]*policy.Policy{allowClient: serverPolicy(allowClient, []policy.Peer{peer})}
	for k := 0; k*rulesPerPolicy < rules; k++ {
		var peers []policy.Peer
		for i := k * rulesPerPolicy; i < min(rules, (k+1)*rulesPerPolicy); i++ {
			peers = append(peers, policy.Peer{IPBlock: &policy.IPBlock{CIDR: ruleCIDR(i).String()}})
		}
		name := fmt.Sprintf("rules-%03d", k)
		want[name] = serverPolicy(name, peers)
	}
	values := make(map[string][]byte, len(want))
	for name, p := range want {
		v, err := p.Encode()
		if err != nil {
			return fmt.Errorf("policy %s: %w", name, err)
		}
		values[name] = v
		if bytes.Equal(e.written[name], v) {
			continue
		}
		if err := e.etcd.Put(ctx, e.keys.Policy(namespace, name), v); err != nil {
			return err
		}
		e.written[name] = v
	}
	for name := range e.written {
		if _, ok := values[name]; ok {
			continue
		}
		if err := e.etcd.Delete(ctx, e.keys.Policy(namespace, name)); err != nil {
			return err
		}
		delete(e.written, name)
	}
	return nil
}

// rulesMissing says what the server node's policy map lacks for rules,
// or "" when it has exactly the rules' CIDR entries and the client's (by
// identity, or with byIPBlock one CIDR entry more).
func (e *ebpfLab) rulesMissing(rules int) (string, error) {
	var cidrs int
	var client bool
	err := e.policyMaps[e.server.Node].Iterate(func(k bpf.PolicyKey, v bpf.PolicyValue) bool {
		want, err := bpf.PolicyKeyFor(e.server.EndpointID, bpf.Ingress, k.Identity, bpf.ProtoTCP, echoPort, 16)
		if err != nil || k != want || v.Verdict != bpf.Allow {
			return true
		}
		if k.Identity == e.client.Identity {
			client = true
		} else {
			cidrs++
		}
		return true
	})
	switch {
	case err != nil:
		return "", err
	case e.byIPBlock && cidrs != rules+1:
		return fmt.Sprintf("%d CIDR entries of the server, want %d (the rules and the client's ipBlock)", cidrs, rules+1), nil
	case e.byIPBlock:
	case !client:
		return "no entry for the client", nil
	case cidrs != rules:
		return fmt.Sprintf("%d CIDR entries of the server, want %d", cidrs, rules), nil
	}
	return "", nil
}

// writeServices makes etcd hold services 0..n-1, each with the server as
// its one backend, and returns how many there were.
func (e *ebpfLab) writeServices(ctx context.Context, n int) (int, error) {
	prev := e.services
	var kvs []kvstore.KeyValue
	for i := prev; i < n; i++ {
		svc := service.Service{
			Namespace: namespace, Name: serviceName(i),
			Frontends: []service.Frontend{{
				Address: netip.AddrPortFrom(clusterIP(i), echoPort), Protocol: service.TCP,
				Backends: []service.Backend{{Address: netip.AddrPortFrom(e.server.IP, echoPort), Node: e.server.Node}},
			}},
		}
		if err := svc.Validate(); err != nil {
			return prev, err
		}
		v, err := json.Marshal(svc)
		if err != nil {
			return prev, fmt.Errorf("encode service %s: %w", svc.Name, err)
		}
		kvs = append(kvs, kvstore.KeyValue{Key: e.keys.Service(namespace, svc.Name), Value: v})
	}
	if err := e.etcd.PutMany(ctx, kvs); err != nil {
		return prev, err
	}
	for i := n; i < prev; i++ {
		if err := e.etcd.Delete(ctx, e.keys.Service(namespace, serviceName(i))); err != nil {
			return prev, err
		}
	}
	e.services = n
	return prev, nil
}

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// servicesMissing says what the client node's services map lacks: a
// frontend of 0..n-1 with its one backend, or one of n..prev-1 still
// there.
func (e *ebpfLab) servicesMissing(n, prev int) (string, error) {
	for i := range max(n, prev) {
		fe := netip.AddrPortFrom(clusterIP(i), echoPort)
		v, ok, err := e.servicesMap.Lookup(bpf.ServiceKeyFor(fe, bpf.ProtoTCP, 0))
		switch {
		case err != nil:
			return "", err
		case i < n && (!ok || v.Count != 1):
			return fmt.Sprintf("frontend %s (service %d of %d) has no backend", fe, i+1, n), nil
		case i >= n && ok:
			return fmt.Sprintf("frontend %s of a deleted service is still there", fe), nil
		}
	}
	return "", nil
}

// timeApplies times n policy applies: each selects every pod of the
// namespace (on both nodes) and allows the client on a port of its own;
// it is timed from the put into etcd until every node's pinned policy map
// holds the entry of each of its pods. Then it is deleted, untimed.
func (e *ebpfLab) timeApplies(ctx context.Context, n int) ([]time.Duration, error) {
	type entry struct {
		m *bpf.Map[bpf.PolicyKey, bpf.PolicyValue]
		k bpf.PolicyKey
	}
	pods := []lab.Pod{e.client, e.other, e.server}
	lat := make([]time.Duration, 0, n)
	for i := range n {
		port := applyPort + i
		name := fmt.Sprintf("apply-%04d", i)
		p := &policy.Policy{
			Kind: policy.KindNetworkPolicy, Namespace: namespace, Name: name,
			Spec: policy.Spec{
				PolicyTypes: []policy.Type{policy.TypeIngress},
				Ingress: []policy.IngressRule{{
					Ports: []policy.Port{{Protocol: policy.ProtocolTCP, Port: policy.PortNumber(int32(port))}},
					From:  []policy.Peer{{PodSelector: &policy.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				}},
			},
		}
		v, err := p.Encode()
		if err != nil {
			return nil, err
		}
		var want []entry
		for _, pod := range pods {
			k, err := bpf.PolicyKeyFor(pod.EndpointID, bpf.Ingress, e.client.Identity, bpf.ProtoTCP, uint16(port), 16)
			if err != nil {
				return nil, err
			}
			want = append(want, entry{e.policyMaps[pod.Node], k})
		}
		present := func(in bool) func() (string, error) {
			return func() (string, error) {
				for _, w := range want {
					_, ok, err := w.m.Lookup(w.k)
					if err != nil {
						return "", err
					}
					if ok != in {
						return fmt.Sprintf("policy entry %s: present %v, want %v", w.k, ok, in), nil
					}
				}
				return "", nil
			}
		}
		key := e.keys.Policy(namespace, name)
		actx, cancel := context.WithTimeout(ctx, applyTimeout)
		start := time.Now()
		err = e.etcd.Put(actx, key, v)
		if err == nil {
			err = poll(actx, applyPoll, present(true))
		}
		took := time.Since(start)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("apply %d: %w", i, err)
		}
		lat = append(lat, took)
		dctx, cancel := context.WithTimeout(ctx, applyTimeout)
		err = e.etcd.Delete(dctx, key)
		if err == nil {
			err = poll(dctx, applyPoll, present(false))
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("delete apply %d: %w", i, err)
		}
	}
	return lat, nil
}

// poll calls missing every interval until it reports nothing missing, it
// fails, or ctx ends; the error then says what was missing last.
func poll(ctx context.Context, interval time.Duration, missing func() (string, error)) error {
	for {
		what, err := missing()
		if err != nil {
			return err
		}
		if what == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s", ctx.Err(), what)
		case <-time.After(interval):
		}
	}
}
