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
	"sync"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/service"
)

// syncCluster makes the cluster's etcd hold what the lab describes: the
// pods' metadata (pods/<node>/<ns>/<name>), the namespaces' labels and
// the services with their backends. It writes through the control plane's
// own reconciler (controlplane.SyncOnce, fed by a topology source) and
// service translation (service.Build), so the lab writes exactly what
// mesh-controlplane writes for the same objects, and only the difference.
// Policies stay meshctl policy apply's: the lab's source does not provide
// them, so the control plane leaves policies/ alone.
//
// A cluster with kubernetes: true has a mesh-controlplane of its own:
// the lab writes into its API server instead (syncKube).
func (l *Lab) syncCluster(ctx context.Context, cluster string) error {
	l.mu.Lock()
	ks := l.st.kubeCluster(cluster)
	c, err := l.st.Topology.cluster(cluster)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if ks != nil {
		return l.syncKube(ctx, cluster, ks)
	}
	src, err := l.topologySource(cluster)
	if err != nil {
		return err
	}
	clusterID := c.ID
	return l.withEtcd(ctx, cluster, func(client *kvstore.Client, _ kvstore.Keys) error {
		var mu sync.Mutex
		var invalid []error
		cp, err := controlplane.New(controlplane.Config{
			Client: client, Cluster: cluster, ClusterID: clusterID, Source: src, Name: "lab", GCInterval: -1,
			OnInvalid: func(kind controlplane.Kind, key string, err error) {
				mu.Lock()
				invalid = append(invalid, fmt.Errorf("%s %s: %w", kind, key, err))
				mu.Unlock()
			},
		})
		if err != nil {
			return fmt.Errorf("cluster %s: %w", cluster, err)
		}
		if err := cp.SyncOnce(ctx); err != nil {
			return fmt.Errorf("cluster %s: %w", cluster, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if err := errors.Join(invalid...); err != nil {
			return fmt.Errorf("cluster %s: %w", cluster, err)
		}
		return nil
	})
}

// topologySource is a snapshot of one cluster's desired state, taken from
// the lab's state: the topology's namespaces and services, the recorded
// pods (a pod is recorded before its CNI ADD, so its metadata is in etcd
// before the agent hears of it, as with a real control plane) and, as
// services' backends, the running pods (with an IP) that their selectors
// pick.
func (l *Lab) topologySource(cluster string) (*topologySource, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.st.Topology.cluster(cluster)
	if err != nil {
		return nil, err
	}
	src := &topologySource{
		pods:       mapLister[pod.Pod]{},
		namespaces: mapLister[pod.Namespace]{},
		services:   mapLister[service.Service]{},
	}
	for _, ns := range c.Namespaces {
		src.namespaces[ns.Name] = result[pod.Namespace]{v: pod.Namespace{Name: ns.Name, Labels: ns.Labels}}
	}
	for _, p := range l.st.Pods {
		if p.Cluster != cluster {
			continue
		}
		v := pod.Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Node, Labels: p.Labels}
		for _, port := range p.Ports {
			v.Ports = append(v.Ports, pod.Port{Name: port.Name, Port: uint16(port.Port), Protocol: service.Protocol(cmp.Or(port.Protocol, string(service.TCP))).Number()})
		}
		src.pods[v.Owner()] = result[pod.Pod]{v: v}
	}
	for _, spec := range c.Services {
		svc, err := l.st.buildService(cluster, spec)
		src.services[spec.Namespace+"/"+spec.Name] = result[service.Service]{v: svc, err: err}
	}
	return src, nil
}

// buildService is the service's value in etcd: service.Build of its spec
// and of the running pods its selector picks, each ready and serving every
// port at the port's target port.
func (s *state) buildService(cluster string, spec ServiceSpec) (service.Service, error) {
	ports := make([]service.Port, len(spec.Ports))
	for i, p := range spec.Ports {
		ports[i] = service.Port{Name: labPortName(spec, i), Protocol: service.Protocol(p.Protocol), Port: uint16(p.Port)}
	}
	var eps []service.Endpoint
	for _, p := range s.backends(cluster, spec) {
		ep := service.Endpoint{IP: p.IP, Node: p.Node, Ports: map[string]uint16{}, Ready: true, Serving: true}
		for i, sp := range spec.Ports {
			ep.Ports[labPortName(spec, i)] = uint16(sp.TargetPort)
		}
		eps = append(eps, ep)
	}
	ip, err := netip.ParseAddr(spec.ClusterIP)
	if err != nil {
		return service.Service{}, fmt.Errorf("service %s/%s: clusterIP %q: %w", spec.Namespace, spec.Name, spec.ClusterIP, err)
	}
	return service.Build(service.Spec{Namespace: spec.Namespace, Name: spec.Name, ClusterIPs: []netip.Addr{ip}, Ports: ports}, eps)
}

// labPortName is the name of a service's i-th port. Kubernetes makes a
// service with several ports name each; the lab does not, so an unnamed
// one of several is named by its port and protocol ("80-tcp") for
// service.Build to match endpoints to it.
func labPortName(spec ServiceSpec, i int) string {
	p := spec.Ports[i]
	if p.Name != "" || len(spec.Ports) == 1 {
		return p.Name
	}
	return fmt.Sprintf("%d-%s", p.Port, strings.ToLower(p.Protocol))
}

// topologySource is the lab's controlplane.Source: a snapshot that does
// not change, so Run only waits and WaitSynced never does.
type topologySource struct {
	pods       mapLister[pod.Pod]
	namespaces mapLister[pod.Namespace]
	services   mapLister[service.Service]
}

func (s *topologySource) Run(ctx context.Context, _ controlplane.Notify) error {
	<-ctx.Done()
	return ctx.Err()
}

func (s *topologySource) WaitSynced(context.Context) error { return nil }

func (s *topologySource) Kinds() controlplane.Kinds {
	return controlplane.Kinds{Pods: s.pods, Namespaces: s.namespaces, Services: s.services}
}

type result[T any] struct {
	v   T
	err error
}

// mapLister is a controlplane.Lister over a map that is not changed once
// made (so reading it needs no lock).
type mapLister[T any] map[string]result[T]

func (m mapLister[T]) Keys() []string { return slices.Collect(maps.Keys(m)) }

func (m mapLister[T]) Get(key string) (T, bool, error) {
	r, ok := m[key]
	return r.v, ok, r.err
}
