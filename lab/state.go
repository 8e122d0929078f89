package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ErrNotFound is returned for a lab, cluster, node, pod or service that
// does not exist.
var ErrNotFound = errors.New("not found")

// Pod is a running pod of the lab.
type Pod struct {
	Cluster   string `json:"cluster"`
	Node      string `json:"node"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// IP is the address the agent gave the pod.
	IP netip.Addr `json:"ip"`
	// Identity is the pod's security identity.
	Identity   uint32 `json:"identity"`
	EndpointID uint32 `json:"endpointID"`
	// Netns is the path of the pod's network namespace (/run/netns/...).
	Netns  string            `json:"netns"`
	Labels map[string]string `json:"labels,omitempty"`
	Ports  []PortSpec        `json:"ports,omitempty"`
}

// Ref is the pod's full name, "<cluster>/<namespace>/<name>": what its
// echo server answers with.
func (p Pod) Ref() string { return p.Cluster + "/" + p.Namespace + "/" + p.Name }

// Node is a running node of the lab.
type Node struct {
	Cluster string `json:"cluster"`
	Name    string `json:"name"`
	// Subnet is the node's subnet; empty: the lab's network.
	Subnet string     `json:"subnet,omitempty"`
	IP     netip.Addr `json:"ip"`
	// Netns is the path of the node's network namespace.
	Netns string `json:"netns"`
	// AgentSocket is the agent's API socket (meshctl status --agent-socket).
	AgentSocket string `json:"agentSocket"`
	// PodCIDR is the pod CIDR the node's agent claimed.
	PodCIDR netip.Prefix `json:"podCIDR"`
}

// External is a running external host of the lab.
type External struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	// Netns is the path of the external's network namespace.
	Netns string     `json:"netns"`
	Ports []PortSpec `json:"ports,omitempty"`
}

// externalPrefix marks an external in a probe's --from or --to, and in
// what its echo server answers.
const externalPrefix = "ext:"

// Ref is "ext:<name>": how probes name the external, and what its echo
// server answers with.
func (x External) Ref() string { return externalPrefix + x.Name }

// Service is a service of the lab, as written to etcd.
type Service struct {
	Cluster   string        `json:"cluster"`
	Namespace string        `json:"namespace"`
	Name      string        `json:"name"`
	ClusterIP netip.Addr    `json:"clusterIP"`
	Ports     []ServicePort `json:"ports"`
	// Backends are the pods the selector picks, as Pod.Ref.
	Backends []string `json:"backends"`
}

// state is the state file: everything Open, Down, exec and probe need,
// written after every step of Up so that Down finds whatever a crash left.
type state struct {
	Name string `json:"name"`
	// Dir is the lab's run directory; BPFFS the directory under the bpffs
	// mount that holds its agents' pins.
	Dir     string `json:"dir"`
	BPFFS   string `json:"bpffs"`
	Meshctl string `json:"meshctl"`
	Agent   string `json:"agent"`
	// ControlPlane and KubeAPIServer are the binaries of kubernetes
	// clusters.
	ControlPlane  string           `json:"controlplane,omitempty"`
	KubeAPIServer string           `json:"kubeAPIServer,omitempty"`
	Topology      Topology         `json:"topology"`
	LabNetns      string           `json:"labNetns"`
	Clusters      []*clusterState  `json:"clusters"`
	Pods          []*podState      `json:"pods"`
	Externals     []*externalState `json:"externals,omitempty"`
	// Ready is set when Up has finished.
	Ready bool `json:"ready"`
}

type clusterState struct {
	Name       string   `json:"name"`
	EtcdSocket string   `json:"etcdSocket"`
	EtcdPID    int      `json:"etcdPID"`
	EtcdArgs   []string `json:"etcdArgs"`
	EtcdLog    string   `json:"etcdLog"`
	// Upstream are the external etcd's URLs, if the topology names one.
	Upstream []string `json:"upstream,omitempty"`
	// OwnsKeys is set once Up has found the cluster's prefix empty in the
	// external etcd: from then on the keys are the lab's, and Down
	// deletes them.
	OwnsKeys bool         `json:"ownsKeys,omitempty"`
	Nodes    []*nodeState `json:"nodes"`
	// Kube is the cluster's API server and control plane, for a cluster
	// with kubernetes: true.
	Kube *kubeState `json:"kube,omitempty"`
}

type nodeState struct {
	Node
	AgentPID  int      `json:"agentPID"`
	AgentArgs []string `json:"agentArgs"`
	AgentLog  string   `json:"agentLog"`
}

type podState struct {
	Pod
	HostVeth  string `json:"hostVeth"`
	EchoPID   int    `json:"echoPID"`
	EchoLog   string `json:"echoLog"`
	EchoReady string `json:"echoReady"`
}

type externalState struct {
	External
	EchoPID   int    `json:"echoPID"`
	EchoLog   string `json:"echoLog"`
	EchoReady string `json:"echoReady"`
}

const stateFile = "state.json"

func (s *state) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	path := filepath.Join(s.Dir, stateFile)
	tmp := path + ".tmp"
	err = os.WriteFile(tmp, b, 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // a failed write leaves no temporary file
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab state %s: %w; remove the lab with meshctl lab down", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

func (s *state) cluster(name string) (*clusterState, error) {
	for _, c := range s.Clusters {
		if c.Name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w: no cluster %q in lab %s", ErrNotFound, name, s.Name)
}

func (s *state) node(cluster, name string) (*nodeState, error) {
	c, err := s.cluster(cluster)
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("%w: no node %q in cluster %s", ErrNotFound, name, cluster)
}

// findPod resolves a pod reference: "cluster/namespace/name",
// "namespace/name" or "name", the shorter ones only when they name one pod.
func (s *state) findPod(ref string) (*podState, error) {
	parts := strings.Split(ref, "/")
	var match []*podState
	for _, p := range s.Pods {
		ok := false
		switch len(parts) {
		case 1:
			ok = p.Name == parts[0]
		case 2:
			ok = p.Namespace == parts[0] && p.Name == parts[1]
		case 3:
			ok = p.Cluster == parts[0] && p.Namespace == parts[1] && p.Name == parts[2]
		}
		if ok {
			match = append(match, p)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return nil, fmt.Errorf("%w: no pod %q in lab %s (write it as name, namespace/name or cluster/namespace/name)", ErrNotFound, ref, s.Name)
	}
	names := make([]string, len(match))
	for i, p := range match {
		names[i] = p.Ref()
	}
	return nil, fmt.Errorf("pod %q is ambiguous: it names %s; qualify it", ref, strings.Join(names, ", "))
}

// findExternal finds an external by name ("ext:" in front or not).
func (s *state) findExternal(ref string) (*externalState, bool) {
	name := strings.TrimPrefix(ref, externalPrefix)
	for _, x := range s.Externals {
		if x.Name == name {
			return x, true
		}
	}
	return nil, false
}

// findService resolves "namespace/name" (in cluster, if set) or
// "cluster/namespace/name".
func (s *state) findService(ref, cluster string) (Service, bool) {
	parts := strings.Split(ref, "/")
	if len(parts) == 3 {
		cluster, parts = parts[0], parts[1:]
	}
	if len(parts) != 2 {
		return Service{}, false
	}
	for _, svc := range s.services() {
		if (cluster == "" || svc.Cluster == cluster) && svc.Namespace == parts[0] && svc.Name == parts[1] {
			return svc, true
		}
	}
	return Service{}, false
}

// services computes every service and its backends from the running pods.
func (s *state) services() []Service {
	var out []Service
	for _, c := range s.Topology.Clusters {
		for _, spec := range c.Services {
			svc := Service{
				Cluster: c.Name, Namespace: spec.Namespace, Name: spec.Name,
				ClusterIP: netip.MustParseAddr(spec.ClusterIP), Ports: spec.Ports,
			}
			for _, p := range s.backends(c.Name, spec) {
				svc.Backends = append(svc.Backends, p.Ref())
			}
			out = append(out, svc)
		}
	}
	return out
}

// backends are the running pods a service selects, sorted by name.
func (s *state) backends(cluster string, spec ServiceSpec) []*podState {
	var out []*podState
	for _, p := range s.Pods {
		if p.Cluster == cluster && p.Namespace == spec.Namespace && p.IP.IsValid() && selects(spec.Selector, p.Labels) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *podState) int { return strings.Compare(a.Name, b.Name) })
	return out
}
