package lab

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// ErrLabel is wrapped by LabelPod's, LabelNamespace's and
// ParseLabelChange's input errors.
var ErrLabel = errors.New("invalid label change")

// LabelChange is a change of labels as kubectl label makes one: Set adds
// or replaces labels, Remove deletes them.
type LabelChange struct {
	Set    map[string]string
	Remove []string
}

// ParseLabelChange parses kubectl label's arguments: "key=value" sets a
// label, "key-" removes it.
func ParseLabelChange(args []string) (LabelChange, error) {
	ch := LabelChange{Set: map[string]string{}}
	for _, a := range args {
		if k, ok := strings.CutSuffix(a, "-"); ok && k != "" && !strings.Contains(a, "=") {
			ch.Remove = append(ch.Remove, k)
			continue
		}
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return LabelChange{}, fmt.Errorf("%w: label %q: write key=value to set a label, key- to remove it", ErrLabel, a)
		}
		ch.Set[k] = v
	}
	if len(ch.Set) == 0 && len(ch.Remove) == 0 {
		return LabelChange{}, fmt.Errorf("%w: no label to change: give key=value or key-", ErrLabel)
	}
	return ch, nil
}

func (ch LabelChange) apply(m map[string]string) map[string]string {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, ch.Set)
	for _, k := range ch.Remove {
		delete(out, k)
	}
	return out
}

// LabelPod changes the labels of a running pod (ref as probes name it) as
// `kubectl label pod` would: the lab's state changes, and the control
// plane's reconciler (syncCluster) writes the pod's metadata
// (pods/<node>/<namespace>/<name>) and the services that select it into
// the cluster's etcd, as mesh-controlplane would; then it waits
// until the pod's agent has given it the identity of its new labels and
// every agent of the cluster has that identity for its IP.
func (l *Lab) LabelPod(ctx context.Context, ref string, ch LabelChange) (Pod, error) {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	l.mu.Lock()
	ps, err := l.st.findPod(ref)
	var c *Cluster
	if err == nil {
		c, err = l.st.Topology.cluster(ps.Cluster)
	}
	var next map[string]string
	if err == nil {
		next = ch.apply(ps.Labels)
		err = validatePodLabels(ps.Ref(), next)
	}
	l.mu.Unlock()
	if err != nil {
		return Pod{}, err
	}
	p := pod.Pod{Namespace: ps.Namespace, Name: ps.Name, Node: ps.Node, Labels: next}
	for _, port := range ps.Ports {
		p.Ports = append(p.Ports, pod.Port{Name: port.Name, Port: uint16(port.Port), Protocol: service.Protocol(cmp.Or(port.Protocol, string(service.TCP))).Number()})
	}
	if err := p.Validate(); err != nil {
		return Pod{}, fmt.Errorf("%w: pod %s: %w", ErrLabel, ps.Ref(), err)
	}
	l.mu.Lock()
	ps.Labels = next
	for i := range c.Nodes {
		for j := range c.Nodes[i].Pods {
			if s := &c.Nodes[i].Pods[j]; c.Nodes[i].Name == ps.Node && s.Namespace == ps.Namespace && s.Name == ps.Name {
				s.Labels = maps.Clone(next)
			}
		}
	}
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return Pod{}, err
	}
	// The pod's metadata and the services that select it reach etcd
	// through the control plane's reconciler, as with kubectl label.
	if err := l.syncCluster(ctx, ps.Cluster); err != nil {
		return Pod{}, err
	}
	err = l.withEtcd(ctx, ps.Cluster, func(client *kvstore.Client, keys kvstore.Keys) error {
		return l.waitRelabelled(ctx, client, keys, ps.Cluster, ps.Namespace, ps.Name)
	})
	if err != nil {
		return Pod{}, err
	}
	if err := l.waitSynced(ctx, ps.Cluster, nil); err != nil {
		return Pod{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return ps.Pod, nil
}

// LabelNamespace changes the labels of a namespace of a cluster as
// `kubectl label namespace` would: the control plane's reconciler
// (syncCluster) writes namespaces/<namespace> into the cluster's etcd; it
// waits until each of the namespace's running pods
// has the identity of its new label set on every agent. A namespace is
// "<namespace>" (when one cluster has it) or "<cluster>/<namespace>".
func (l *Lab) LabelNamespace(ctx context.Context, ref string, ch LabelChange) error {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	l.mu.Lock()
	c, nsi, err := l.findNamespace(ref)
	var next map[string]string
	if err == nil {
		next = ch.apply(c.Namespaces[nsi].Labels)
		err = validatePodLabels("namespace "+c.Namespaces[nsi].Name, next)
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	name := c.Namespaces[nsi].Name
	if err := (pod.Namespace{Name: name, Labels: next}).Validate(); err != nil {
		return fmt.Errorf("%w: namespace %s: %w", ErrLabel, name, err)
	}
	l.mu.Lock()
	c.Namespaces[nsi].Labels = next
	var pods []string
	for _, p := range l.st.Pods {
		if p.Cluster == c.Name && p.Namespace == name && p.IP.IsValid() {
			pods = append(pods, p.Name)
		}
	}
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return err
	}
	if err := l.syncCluster(ctx, c.Name); err != nil {
		return err
	}
	err = l.withEtcd(ctx, c.Name, func(client *kvstore.Client, keys kvstore.Keys) error {
		for _, p := range pods {
			if err := l.waitRelabelled(ctx, client, keys, c.Name, name, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return l.waitSynced(ctx, c.Name, nil)
}

// findNamespace resolves "<namespace>" or "<cluster>/<namespace>". mu is
// held.
func (l *Lab) findNamespace(ref string) (*Cluster, int, error) {
	cluster, name, hasCluster := strings.Cut(ref, "/")
	if !hasCluster {
		name = cluster
	}
	var found []*Cluster
	var at int
	for i := range l.st.Topology.Clusters {
		c := &l.st.Topology.Clusters[i]
		if hasCluster && c.Name != cluster {
			continue
		}
		if j := slices.IndexFunc(c.Namespaces, func(n Namespace) bool { return n.Name == name }); j >= 0 {
			found, at = append(found, c), j
		}
	}
	switch len(found) {
	case 0:
		return nil, 0, fmt.Errorf("%w: no namespace %q in lab %s: name one of the topology's namespaces, as <namespace> or <cluster>/<namespace>", ErrNotFound, ref, l.st.Name)
	case 1:
		return found[0], at, nil
	}
	return nil, 0, fmt.Errorf("%w: namespace %q is in several clusters: write <cluster>/%s", ErrLabel, ref, name)
}

// validatePodLabels checks labels as the agent will (package labels).
func validatePodLabels(what string, m map[string]string) error {
	for k, v := range m {
		if err := (labels.Label{Source: policy.SourceK8s, Key: k, Value: v}).Validate(); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrLabel, what, err)
		}
	}
	return nil
}

func (l *Lab) withEtcd(ctx context.Context, cluster string, f func(*kvstore.Client, kvstore.Keys) error) error {
	l.mu.Lock()
	cs, err := l.st.cluster(cluster)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	client, err := kvstore.New(ctx, etcdConfig(cs))
	if err != nil {
		return fmt.Errorf("cluster %s: %w", cluster, err)
	}
	defer func() { _ = client.Close() }()
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		return err
	}
	return f(client, keys)
}

// waitRelabelled waits until the pod's etcd entry (endpoints/<ip>) has the
// identity of the pod's labels and its namespace's as the lab has them
// now, and records that identity.
func (l *Lab) waitRelabelled(ctx context.Context, client *kvstore.Client, keys kvstore.Keys, cluster, namespace, name string) error {
	l.mu.Lock()
	ps, err := l.st.findPod(cluster + "/" + namespace + "/" + name)
	var want labels.Set
	var ip netip.Addr
	if err == nil {
		c, _ := l.st.Topology.cluster(cluster)
		var nsLabels map[string]string
		for _, n := range c.Namespaces {
			if n.Name == namespace {
				nsLabels = n.Labels
			}
		}
		ip = ps.IP
		want, err = labels.NewSet(policy.PodLabels(cluster, namespace, ps.Labels, nsLabels)...)
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	last := "no entry"
	for {
		id, have, err := entryIdentity(ctx, client, keys, ip)
		switch {
		case err != nil:
			last = err.Error()
		case have.Equal(want):
			l.mu.Lock()
			ps.Identity = uint32(id)
			l.mu.Unlock()
			return l.save()
		default:
			last = fmt.Sprintf("identity %d has labels %s", id, have)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod %s/%s/%s: its agent did not relabel it within %s: want labels %s; %s (is the agent of node %s running?)",
				cluster, namespace, name, syncTimeout, want, last, ps.Node)
		case <-time.After(pollInterval):
		}
	}
}

// entryIdentity reads the identity of ip's etcd entry and its labels.
func entryIdentity(ctx context.Context, client *kvstore.Client, keys kvstore.Keys, ip netip.Addr) (uint32, labels.Set, error) {
	kv, ok, err := client.Get(ctx, keys.Endpoint(ipcache.KeyOf(ip)))
	if err != nil || !ok {
		return 0, labels.Set{}, fmt.Errorf("endpoints/%s: found %v (%w)", ip, ok, err)
	}
	e, err := ipcache.Decode(ip.String(), kv.Value)
	if err != nil {
		return 0, labels.Set{}, err
	}
	kv, ok, err = client.Get(ctx, keys.IdentityID(e.Identity.String()))
	if err != nil || !ok {
		return 0, labels.Set{}, fmt.Errorf("identity %d: found %v (%w)", e.Identity, ok, err)
	}
	set, err := labels.ParseSet(string(kv.Value))
	return uint32(e.Identity), set, err
}
