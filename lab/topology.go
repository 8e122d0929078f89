package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/labels"
)

// ErrTopology is wrapped by every error about a topology file: the message
// names the field (clusters[0].nodes[1].pods[2].namespace) and says what
// to write instead.
var ErrTopology = errors.New("invalid lab topology")

// Defaults of a topology's optional fields.
var (
	// DefaultNetwork holds the node addresses on the lab bridge.
	DefaultNetwork = netip.MustParsePrefix("192.168.77.0/24")
)

const (
	// DefaultMaskSize is the size of each node's pod CIDR.
	DefaultMaskSize = 24
	// firstNodeHost is the host number of the first automatic node address
	// (192.168.77.11): low numbers stay free for addresses given by hand.
	firstNodeHost = 11
	// maxLabName keeps every netns name and the run directory short.
	maxLabName = 16
	// maxNetnsName is NAME_MAX: a netns is a file under /run/netns.
	maxNetnsName = 255
)

// Topology is a lab: clusters of nodes and pods, and services. It is what
// a topology file (docs/lab.md) holds; ParseTopology validates it, and so
// does Up for a Topology built in Go.
type Topology struct {
	// Name is the lab's name: 1-16 of [a-z0-9-], starting with a letter.
	// Every network namespace of the lab is called "mp-<name>-...".
	Name string `json:"name"`
	// Network holds the node addresses on the lab's bridge. Empty means
	// DefaultNetwork.
	Network string `json:"network,omitempty"`
	// Clusters are the lab's clusters; they share the bridge.
	Clusters []Cluster `json:"clusters"`
	// Subnets are further networks for nodes, each on a bridge of its
	// own: nodes of different networks (Network and the subnets) reach
	// each other only through the lab's router, a namespace with an
	// address (the first host) in every network that forwards between
	// them and knows no pod CIDR. So native routing cannot reach pods
	// across them, and tunnel mode can (docs/lab.md).
	Subnets []SubnetSpec `json:"subnets,omitempty"`
	// Routing is the agents' routing mode between nodes (their
	// --routing-mode): "tunnel" (VXLAN; works across subnets) or
	// "native" (routes via the nodes' addresses). Empty means tunnel.
	Routing string `json:"routing,omitempty"`
	// Externals are hosts outside every cluster, on the lab's bridge: to
	// the datapath they are the world (or the CIDR identities of ipBlock
	// policies).
	Externals []ExternalSpec `json:"externals,omitempty"`
}

// The routing modes of Topology.Routing (nodeagent's; the lab runs the
// agent as a process and does not import it).
const (
	RoutingTunnel = "tunnel"
	RoutingNative = "native"
)

// SubnetSpec is a network of nodes behind the lab's router.
type SubnetSpec struct {
	// Name is a DNS label of at most 12 characters, unique among the
	// subnets; nodes name it in their subnet field.
	Name string `json:"name"`
	// Network is the subnet's IPv4 network, /8 to /28, overlapping no
	// other network or pod CIDR of the lab.
	Network string `json:"network"`
}

// ExternalSpec is a host outside every cluster: a network namespace on the
// lab's bridge with an address of the lab network, routes to every node's
// pod CIDR through that node, and an echo server on its ports, as pods
// have.
type ExternalSpec struct {
	// Name is a DNS label, unique among the externals.
	Name string `json:"name"`
	// IP is the external's address: a host address of the lab network that
	// no node has. Required, since ipBlock policies name it.
	IP string `json:"ip"`
	// Ports are served by the external's echo server; none means no echo
	// server.
	Ports []PortSpec `json:"ports,omitempty"`
}

// Cluster is one cluster: its own etcd, IPAM pool, nodes and services.
type Cluster struct {
	// Name is the cluster name (the etcd key prefix).
	Name string `json:"name"`
	// ID is the cluster ID, 1-255, unique in the lab.
	ID int `json:"id"`
	// PodCIDR is the cluster's IPAM pool (IPv4); nodes get MaskSize-sized
	// parts of it.
	PodCIDR string `json:"podCIDR"`
	// MaskSize is the size of each node's pod CIDR. Zero means
	// DefaultMaskSize.
	MaskSize int `json:"maskSize,omitempty"`
	// Etcd, if set, names an external etcd; otherwise the lab runs an
	// embedded one for the cluster.
	Etcd *Etcd `json:"etcd,omitempty"`
	// Namespaces are the namespaces pods and services may use.
	Namespaces []Namespace `json:"namespaces,omitempty"`
	// Nodes are the cluster's nodes, each a network namespace with an agent.
	Nodes []NodeSpec `json:"nodes"`
	// Services are ClusterIP services whose backends are the lab's pods
	// that match their selectors.
	Services []ServiceSpec `json:"services,omitempty"`
	// Kubernetes, if set, runs the cluster on a real kube-apiserver (on
	// the cluster's etcd, loopback only) with a mesh-controlplane process
	// watching it: the lab creates its namespaces, pods, services and
	// EndpointSlices there instead of syncing etcd itself (docs/lab.md).
	Kubernetes bool `json:"kubernetes,omitempty"`
}

// Etcd names an external etcd.
type Etcd struct {
	// Endpoints are the client URLs (http:// or unix://), reachable from
	// the host's root network namespace.
	Endpoints []string `json:"endpoints"`
}

// Namespace is a Kubernetes-like namespace: its labels become identity
// labels of its pods.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// NodeSpec is a node as the topology describes it.
type NodeSpec struct {
	// Name is the node's name: a DNS label, unique in the cluster.
	Name string `json:"name"`
	// Subnet, if set, names the subnet the node is on; empty means the
	// lab's network.
	Subnet string `json:"subnet,omitempty"`
	// IP is the node's address in its network (the lab's or its
	// subnet's). Empty means the next free one from .11 of it.
	IP string `json:"ip,omitempty"`
	// Pods start on the node when the lab comes up.
	Pods []PodSpec `json:"pods,omitempty"`
}

// PodSpec is a pod as the topology (or AddPod) describes it.
type PodSpec struct {
	// Name is the pod's name: a DNS label, unique in its namespace.
	Name string `json:"name"`
	// Namespace is one of the cluster's namespaces.
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Ports are the pod's container ports; the pod's echo server listens
	// on each.
	Ports []PortSpec `json:"ports,omitempty"`
}

// PortSpec is a container port.
type PortSpec struct {
	// Name, if set, is the port's name (named ports in policies).
	Name string `json:"name,omitempty"`
	Port int    `json:"port"`
	// Protocol is TCP or UDP. Empty means TCP.
	Protocol string `json:"protocol,omitempty"`
}

// ServiceSpec is a ClusterIP service.
type ServiceSpec struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// ClusterIP is the service's virtual IPv4 address, outside every pod
	// CIDR and the lab network.
	ClusterIP string `json:"clusterIP"`
	// Selector picks the backends: the pods of the service's cluster and
	// namespace that have all of these labels.
	Selector map[string]string `json:"selector"`
	Ports    []ServicePort     `json:"ports"`
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name string `json:"name,omitempty"`
	// Port is the port clients connect to on the ClusterIP.
	Port int `json:"port"`
	// TargetPort is the backends' port. Zero means Port.
	TargetPort int `json:"targetPort,omitempty"`
	// Protocol is TCP or UDP. Empty means TCP.
	Protocol string `json:"protocol,omitempty"`
}

// LoadTopology reads and validates a topology file.
func LoadTopology(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTopology, err)
	}
	t, err := ParseTopology(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTopology decodes a topology (YAML or JSON) strictly, fills in the
// defaults and validates it. Unknown and duplicate fields are errors.
func ParseTopology(data []byte) (*Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(data, &t); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrTopology, strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: "))
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

var (
	labNameRE = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	dnsLabel  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	// portNameRE is Kubernetes' IANA_SVC_NAME: at most 15 characters, at
	// least one letter.
	portNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$`)
)

func topoErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrTopology, field, fmt.Sprintf(format, args...))
}

// Validate checks the whole topology and fills in defaults (Network,
// MaskSize, node IPs, protocols, target ports). Nothing outside the
// topology is looked at: whether the names are free on this machine is
// Up's business.
func (t *Topology) Validate() error {
	if len(t.Name) > maxLabName || !labNameRE.MatchString(t.Name) {
		return topoErr("name", "%q: use 1-%d lowercase letters, digits and '-', starting with a letter (it prefixes every netns: mp-<name>-)", t.Name, maxLabName)
	}
	network := DefaultNetwork
	if t.Network != "" {
		p, err := parseCIDR(t.Network)
		if err != nil {
			return topoErr("network", "%v", err)
		}
		if p.Bits() < 8 || p.Bits() > 28 {
			return topoErr("network", "%s: use an IPv4 network between /8 and /28", p)
		}
		network = p
	}
	t.Network = network.String()
	switch t.Routing {
	case "":
		t.Routing = RoutingTunnel
	case RoutingTunnel, RoutingNative:
	default:
		return topoErr("routing", "%q: use tunnel (VXLAN, works across subnets) or native (routes via the nodes' addresses)", t.Routing)
	}
	segments, err := t.validateSubnets(network)
	if err != nil {
		return err
	}
	if len(t.Clusters) == 0 {
		return topoErr("clusters", "a lab needs at least one cluster")
	}
	var (
		clusterNames = map[string]bool{}
		clusterIDs   = map[int]string{}
		pools        []ipam.Pool
		nodeIPs      = map[netip.Addr]string{}
		clusterIPs   = map[netip.Addr]string{}
	)
	for ci := range t.Clusters {
		c := &t.Clusters[ci]
		at := fmt.Sprintf("clusters[%d]", ci)
		if err := kvstore.ValidateClusterName(c.Name); err != nil || strings.Contains(c.Name, "_") {
			return topoErr(at+".name", "%q: use 1-32 lowercase letters, digits and '-'", c.Name)
		}
		if clusterNames[c.Name] {
			return topoErr(at+".name", "cluster %q appears twice", c.Name)
		}
		clusterNames[c.Name] = true
		if err := identity.ValidateClusterID(c.ID); err != nil {
			return topoErr(at+".id", "%d: use 1-255, unique in the lab", c.ID)
		}
		if other, ok := clusterIDs[c.ID]; ok {
			return topoErr(at+".id", "cluster %s has ID %d too; cluster IDs must be unique", other, c.ID)
		}
		clusterIDs[c.ID] = c.Name
		pool, err := c.pool()
		if err != nil {
			return topoErr(at+".podCIDR", "%v", err)
		}
		for _, sg := range segments {
			if pool.IPv4[0].Overlaps(sg.network) {
				return topoErr(at+".podCIDR", "%s overlaps the %s %s", pool.IPv4[0], sg.what(), sg.network)
			}
		}
		for i, p := range pools {
			if p.IPv4[0].Overlaps(pool.IPv4[0]) {
				return topoErr(at+".podCIDR", "%s overlaps the pod CIDR %s of cluster %s", pool.IPv4[0], p.IPv4[0], t.Clusters[i].Name)
			}
		}
		pools = append(pools, pool)
		if err := c.validateEtcd(at + ".etcd"); err != nil {
			return err
		}
		if err := c.validateNamespaces(at); err != nil {
			return err
		}
		if len(c.Nodes) == 0 {
			return topoErr(at+".nodes", "cluster %s has no nodes", c.Name)
		}
		if capacity := 1 << (c.MaskSize - pool.IPv4[0].Bits()); len(c.Nodes) > capacity {
			return topoErr(at+".nodes", "%d nodes, but %s holds only %d node CIDRs of /%d", len(c.Nodes), pool.IPv4[0], capacity, c.MaskSize)
		}
		nodeNames := map[string]bool{}
		pods := map[string]string{} // ns/name -> node
		for ni := range c.Nodes {
			n := &c.Nodes[ni]
			nat := fmt.Sprintf("%s.nodes[%d]", at, ni)
			if !dnsLabel.MatchString(n.Name) {
				return topoErr(nat+".name", "%q: use a DNS label (1-63 lowercase letters, digits and '-')", n.Name)
			}
			if nodeNames[n.Name] {
				return topoErr(nat+".name", "node %q appears twice in cluster %s", n.Name, c.Name)
			}
			nodeNames[n.Name] = true
			if err := checkNetnsName(nat+".name", nodeNetnsName(t.Name, c.Name, n.Name)); err != nil {
				return err
			}
			sg, ok := segments[n.Subnet]
			if !ok {
				return topoErr(nat+".subnet", "%q is not a subnet of the lab (%s)", n.Subnet, t.subnetNames())
			}
			if n.IP != "" {
				ip, err := netip.ParseAddr(n.IP)
				if err != nil || !ip.Is4() {
					return topoErr(nat+".ip", "%q is not an IPv4 address", n.IP)
				}
				if err := hostOf(sg.network, ip); err != nil {
					return topoErr(nat+".ip", "%v", err)
				}
				if other, ok := nodeIPs[ip]; ok {
					return topoErr(nat+".ip", "%s is the address of %s too", ip, other)
				}
				nodeIPs[ip] = "node " + c.Name + "/" + n.Name
			}
			for pi := range n.Pods {
				p := &n.Pods[pi]
				pat := fmt.Sprintf("%s.pods[%d]", nat, pi)
				if err := c.validatePod(t.Name, pat, p); err != nil {
					return err
				}
				key := p.Namespace + "/" + p.Name
				if other, ok := pods[key]; ok {
					return topoErr(pat+".name", "pod %s is on node %s already; pod names are unique per namespace", key, other)
				}
				pods[key] = n.Name
			}
		}
		svcNames := map[string]bool{}
		for si := range c.Services {
			s := &c.Services[si]
			sat := fmt.Sprintf("%s.services[%d]", at, si)
			if err := c.validateService(sat, s); err != nil {
				return err
			}
			key := s.Namespace + "/" + s.Name
			if svcNames[key] {
				return topoErr(sat+".name", "service %s appears twice", key)
			}
			svcNames[key] = true
			ip := netip.MustParseAddr(s.ClusterIP) // validated
			for _, sg := range segments {
				if sg.network.Contains(ip) {
					return topoErr(sat+".clusterIP", "%s is inside the %s %s", ip, sg.what(), sg.network)
				}
			}
			for i, p := range pools {
				if p.IPv4[0].Contains(ip) {
					return topoErr(sat+".clusterIP", "%s is inside the pod CIDR %s of cluster %s", ip, p.IPv4[0], t.Clusters[i].Name)
				}
			}
			if other, ok := clusterIPs[ip]; ok {
				return topoErr(sat+".clusterIP", "%s is the ClusterIP of service %s too", ip, other)
			}
			clusterIPs[ip] = c.Name + "/" + key
		}
	}
	// Later clusters' pod CIDRs are known only now: check the ClusterIPs
	// of earlier clusters against them too.
	for ip, svc := range clusterIPs {
		for i, p := range pools {
			if p.IPv4[0].Contains(ip) {
				return topoErr("clusters", "service %s: ClusterIP %s is inside the pod CIDR %s of cluster %s", svc, ip, p.IPv4[0], t.Clusters[i].Name)
			}
		}
	}
	for ci := range t.Clusters {
		if err := t.Clusters[ci].validateKubernetes(fmt.Sprintf("clusters[%d]", ci), network, pools); err != nil {
			return err
		}
	}
	if err := t.validateExternals(network, nodeIPs); err != nil {
		return err
	}
	return t.assignNodeIPs(segments, nodeIPs)
}

// segment is one network of the lab: the lab's (subnet "") or a subnet.
type segment struct {
	subnet  string
	network netip.Prefix
	bridge  string     // in the lab namespace
	router  netip.Addr // the router's address in it; invalid without subnets
}

func (sg segment) what() string {
	if sg.subnet == "" {
		return "lab network"
	}
	return "subnet " + sg.subnet
}

// maxSubnetName keeps the bridge and port names within IFNAMSIZ.
const maxSubnetName = 12

// validateSubnets checks the subnets and returns every segment by subnet
// name ("" the lab's network). With subnets, the first host of every
// network is the router's.
func (t *Topology) validateSubnets(network netip.Prefix) (map[string]segment, error) {
	segs := map[string]segment{"": {network: network, bridge: bridgeName}}
	for i := range t.Subnets {
		sn := &t.Subnets[i]
		at := fmt.Sprintf("subnets[%d]", i)
		if len(sn.Name) > maxSubnetName || !dnsLabel.MatchString(sn.Name) {
			return nil, topoErr(at+".name", "%q: use a DNS label of at most %d characters", sn.Name, maxSubnetName)
		}
		if _, ok := segs[sn.Name]; ok {
			return nil, topoErr(at+".name", "subnet %q appears twice", sn.Name)
		}
		p, err := parseCIDR(sn.Network)
		if err != nil {
			return nil, topoErr(at+".network", "%v", err)
		}
		if p.Bits() < 8 || p.Bits() > 28 {
			return nil, topoErr(at+".network", "%s: use an IPv4 network between /8 and /28", p)
		}
		for _, o := range segs {
			if o.network.Overlaps(p) {
				return nil, topoErr(at+".network", "%s overlaps the %s %s", p, o.what(), o.network)
			}
		}
		sn.Network = p.String()
		segs[sn.Name] = segment{subnet: sn.Name, network: p, bridge: fmt.Sprintf("br%d", i+1)}
	}
	if len(t.Subnets) > 0 {
		for name, sg := range segs {
			sg.router = sg.network.Addr().Next()
			segs[name] = sg
		}
	}
	return segs, nil
}

func (t *Topology) subnetNames() string {
	if len(t.Subnets) == 0 {
		return "it has none: declare them under subnets"
	}
	names := make([]string, len(t.Subnets))
	for i, sn := range t.Subnets {
		names[i] = sn.Name
	}
	return "declared: " + strings.Join(names, ", ")
}

// segments returns the validated topology's segments by subnet name.
func (t *Topology) segments() map[string]segment {
	segs, err := t.validateSubnets(netip.MustParsePrefix(t.Network))
	if err != nil {
		panic("lab: segments of an invalid topology: " + err.Error())
	}
	return segs
}

// validateExternals checks the externals and adds their addresses to
// taken, so that no node gets one.
func (t *Topology) validateExternals(network netip.Prefix, taken map[netip.Addr]string) error {
	names := map[string]bool{}
	for i := range t.Externals {
		x := &t.Externals[i]
		at := fmt.Sprintf("externals[%d]", i)
		if !dnsLabel.MatchString(x.Name) {
			return topoErr(at+".name", "%q: use a DNS label (1-63 lowercase letters, digits and '-')", x.Name)
		}
		if names[x.Name] {
			return topoErr(at+".name", "external %q appears twice", x.Name)
		}
		names[x.Name] = true
		if err := checkNetnsName(at+".name", externalNetnsName(t.Name, x.Name)); err != nil {
			return err
		}
		ip, err := netip.ParseAddr(x.IP)
		if err != nil || !ip.Is4() {
			return topoErr(at+".ip", "%q is not an IPv4 address: give the external an address of the lab network %s", x.IP, network)
		}
		if err := hostOf(network, ip); err != nil {
			return topoErr(at+".ip", "%v", err)
		}
		if other, ok := taken[ip]; ok {
			return topoErr(at+".ip", "%s is the address of %s too", ip, other)
		}
		taken[ip] = "external " + x.Name
		if err := validatePorts(at, x.Ports); err != nil {
			return err
		}
	}
	return nil
}

// assignNodeIPs gives the nodes without an address the next free ones
// of their network from .11, in file order. With subnets, the router's
// addresses are taken.
func (t *Topology) assignNodeIPs(segments map[string]segment, taken map[netip.Addr]string) error {
	next := make(map[string]netip.Addr)
	for name, sg := range segments {
		if sg.router.IsValid() {
			if other := taken[sg.router]; other != "" {
				return topoErr("subnets", "%s is the lab router's address in the %s %s, but %s has it: use another", sg.router, sg.what(), sg.network, other)
			}
			taken[sg.router] = "the router"
		}
		a := sg.network.Addr()
		for range firstNodeHost {
			a = a.Next()
		}
		next[name] = a
	}
	for ci := range t.Clusters {
		for ni := range t.Clusters[ci].Nodes {
			n := &t.Clusters[ci].Nodes[ni]
			if n.IP != "" {
				continue
			}
			sg := segments[n.Subnet]
			a := next[n.Subnet]
			for taken[a] != "" {
				a = a.Next()
			}
			if hostOf(sg.network, a) != nil {
				return topoErr(fmt.Sprintf("clusters[%d].nodes[%d].ip", ci, ni), "the %s %s has no free address left for node %s: use a larger network", sg.what(), sg.network, n.Name)
			}
			n.IP = a.String()
			taken[a] = "node " + t.Clusters[ci].Name + "/" + n.Name
			next[n.Subnet] = a.Next()
		}
	}
	return nil
}

// hostOf checks that ip is a host address of network (not its network or
// broadcast address).
func hostOf(network netip.Prefix, ip netip.Addr) error {
	if !network.Contains(ip) {
		return fmt.Errorf("%s is outside the lab network %s", ip, network)
	}
	last := broadcast(network)
	if ip == network.Addr() || ip == last {
		return fmt.Errorf("%s is the network or broadcast address of %s", ip, network)
	}
	return nil
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return p, fmt.Errorf("%q is not an IPv4 CIDR (write it like 10.200.0.0/16)", s)
	}
	if p.Masked() != p {
		return p, fmt.Errorf("%s has host bits set; did you mean %s?", p, p.Masked())
	}
	return p, nil
}

// pool is the cluster's IPAM pool; it fills in MaskSize.
func (c *Cluster) pool() (ipam.Pool, error) {
	p, err := parseCIDR(c.PodCIDR)
	if err != nil {
		return ipam.Pool{}, err
	}
	if c.MaskSize == 0 {
		c.MaskSize = DefaultMaskSize
	}
	pool := ipam.Pool{Name: poolName, IPv4: []netip.Prefix{p}, IPv4MaskSize: c.MaskSize}
	if err := pool.Validate(); err != nil {
		return pool, fmt.Errorf("%s with maskSize %d: %w", p, c.MaskSize, err)
	}
	return pool, nil
}

// poolName is the IPAM pool the lab creates in each cluster.
const poolName = "lab"

func (c *Cluster) validateEtcd(at string) error {
	if c.Etcd == nil {
		return nil
	}
	if len(c.Etcd.Endpoints) == 0 {
		return topoErr(at+".endpoints", "name at least one endpoint, or drop etcd for an embedded one")
	}
	for i, ep := range c.Etcd.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "unix") || (u.Host == "" && u.Path == "") {
			return topoErr(fmt.Sprintf("%s.endpoints[%d]", at, i), "%q: use http://host:port or unix:///path (the lab proxies etcd into the node namespaces as plain bytes, so no TLS)", kvstore.RedactEndpoint(ep))
		}
		if u.User != nil {
			return topoErr(fmt.Sprintf("%s.endpoints[%d]", at, i), "%s: the lab's etcd takes no credentials: write the URL without them", kvstore.RedactEndpoint(ep))
		}
	}
	return nil
}

func (c *Cluster) validateNamespaces(at string) error {
	seen := map[string]bool{}
	for i, ns := range c.Namespaces {
		nat := fmt.Sprintf("%s.namespaces[%d]", at, i)
		if !dnsLabel.MatchString(ns.Name) {
			return topoErr(nat+".name", "%q: use a DNS label", ns.Name)
		}
		if seen[ns.Name] {
			return topoErr(nat+".name", "namespace %q appears twice", ns.Name)
		}
		seen[ns.Name] = true
		if _, err := labels.FromMap("k8s", ns.Labels); err != nil {
			return topoErr(nat+".labels", "%v", err)
		}
	}
	return nil
}

func (c *Cluster) hasNamespace(name string) bool {
	return slices.ContainsFunc(c.Namespaces, func(ns Namespace) bool { return ns.Name == name })
}

func (c *Cluster) namespaceNames() string {
	names := make([]string, len(c.Namespaces))
	for i, ns := range c.Namespaces {
		names[i] = ns.Name
	}
	if len(names) == 0 {
		return "none are declared: add them under namespaces"
	}
	return "declared: " + strings.Join(names, ", ")
}

// validatePod checks one pod (of the topology, or given to AddPod) and
// fills in its ports' protocols.
func (c *Cluster) validatePod(lab, at string, p *PodSpec) error {
	if !dnsLabel.MatchString(p.Name) {
		return topoErr(at+".name", "%q: use a DNS label (1-63 lowercase letters, digits and '-')", p.Name)
	}
	if !c.hasNamespace(p.Namespace) {
		return topoErr(at+".namespace", "%q is not a namespace of cluster %s (%s)", p.Namespace, c.Name, c.namespaceNames())
	}
	if _, err := labels.FromMap("k8s", p.Labels); err != nil {
		return topoErr(at+".labels", "%v", err)
	}
	if err := checkNetnsName(at+".name", podNetnsName(lab, c.Name, p.Namespace, p.Name)); err != nil {
		return err
	}
	return validatePorts(at, p.Ports)
}

// validatePorts checks the ports of a pod or an external and fills in
// their protocols.
func validatePorts(at string, ports []PortSpec) error {
	names := map[string]bool{}
	type pp struct {
		port  int
		proto string
	}
	seen := map[pp]bool{}
	for i := range ports {
		port := &ports[i]
		pat := fmt.Sprintf("%s.ports[%d]", at, i)
		if port.Port < 1 || port.Port > 65535 {
			return topoErr(pat+".port", "%d: use 1-65535", port.Port)
		}
		proto, err := protocol(port.Protocol)
		if err != nil {
			return topoErr(pat+".protocol", "%v", err)
		}
		port.Protocol = proto
		if seen[pp{port.Port, proto}] {
			return topoErr(pat+".port", "%d/%s appears twice", port.Port, proto)
		}
		seen[pp{port.Port, proto}] = true
		if port.Name != "" {
			if !portNameRE.MatchString(port.Name) || !strings.ContainsAny(port.Name, "abcdefghijklmnopqrstuvwxyz") {
				return topoErr(pat+".name", "%q: use 1-15 lowercase letters, digits and '-', with at least one letter", port.Name)
			}
			if names[port.Name] {
				return topoErr(pat+".name", "port name %q appears twice", port.Name)
			}
			names[port.Name] = true
		}
	}
	return nil
}

func (c *Cluster) validateService(at string, s *ServiceSpec) error {
	if !dnsLabel.MatchString(s.Name) {
		return topoErr(at+".name", "%q: use a DNS label", s.Name)
	}
	if !c.hasNamespace(s.Namespace) {
		return topoErr(at+".namespace", "%q is not a namespace of cluster %s (%s)", s.Namespace, c.Name, c.namespaceNames())
	}
	ip, err := netip.ParseAddr(s.ClusterIP)
	if err != nil || !ip.Is4() || ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
		return topoErr(at+".clusterIP", "%q: use a unicast IPv4 address (like 10.96.0.10)", s.ClusterIP)
	}
	if len(s.Selector) == 0 {
		return topoErr(at+".selector", "empty: a service needs a selector (like {app: web}) to pick its backends")
	}
	if _, err := labels.FromMap("k8s", s.Selector); err != nil {
		return topoErr(at+".selector", "%v", err)
	}
	if len(s.Ports) == 0 {
		return topoErr(at+".ports", "a service needs at least one port")
	}
	type pp struct {
		port  int
		proto string
	}
	seen := map[pp]bool{}
	names := map[string]bool{}
	for i := range s.Ports {
		sp := &s.Ports[i]
		pat := fmt.Sprintf("%s.ports[%d]", at, i)
		if sp.Port < 1 || sp.Port > 65535 {
			return topoErr(pat+".port", "%d: use 1-65535", sp.Port)
		}
		if sp.TargetPort == 0 {
			sp.TargetPort = sp.Port
		}
		if sp.TargetPort < 1 || sp.TargetPort > 65535 {
			return topoErr(pat+".targetPort", "%d: use 1-65535 (or leave it out: the same as port)", sp.TargetPort)
		}
		proto, err := protocol(sp.Protocol)
		if err != nil {
			return topoErr(pat+".protocol", "%v", err)
		}
		sp.Protocol = proto
		if seen[pp{sp.Port, proto}] {
			return topoErr(pat+".port", "%d/%s appears twice", sp.Port, proto)
		}
		seen[pp{sp.Port, proto}] = true
		if sp.Name != "" {
			if !portNameRE.MatchString(sp.Name) {
				return topoErr(pat+".name", "%q: use 1-15 lowercase letters, digits and '-'", sp.Name)
			}
			if names[sp.Name] {
				return topoErr(pat+".name", "port name %q appears twice", sp.Name)
			}
			names[sp.Name] = true
		}
	}
	return nil
}

func protocol(s string) (string, error) {
	switch s {
	case "", "TCP":
		return "TCP", nil
	case "UDP":
		return "UDP", nil
	}
	return "", fmt.Errorf("%q: use TCP or UDP (the lab's echo servers speak only those)", s)
}

func checkNetnsName(field, name string) error {
	if len(name) > maxNetnsName {
		return topoErr(field, "the network namespace name %s... would be %d characters, more than %d: use shorter names", name[:40], len(name), maxNetnsName)
	}
	return nil
}

// cluster returns the named cluster of the topology.
func (t *Topology) cluster(name string) (*Cluster, error) {
	for i := range t.Clusters {
		if t.Clusters[i].Name == name {
			return &t.Clusters[i], nil
		}
	}
	return nil, fmt.Errorf("%w: no cluster %q in lab %s", ErrNotFound, name, t.Name)
}

// selects reports whether a selector matches a pod's labels.
func selects(selector, podLabels map[string]string) bool {
	for k, v := range selector {
		if pv, ok := podLabels[k]; !ok || pv != v {
			return false
		}
	}
	return len(selector) > 0
}

// Service ranges of kubernetes clusters (the API server's
// --service-cluster-ip-range): the smallest prefix of at least
// serviceRangeMinBits that holds every ClusterIP of the cluster, at most
// serviceRangeMaxBits wide, the API server's limit.
const (
	serviceRangeMinBits = 24
	serviceRangeMaxBits = 12
)

// defaultServiceRange is the service range of a kubernetes cluster
// without services.
var defaultServiceRange = netip.MustParsePrefix("10.96.0.0/24")

// validateKubernetes checks what a cluster with kubernetes: true needs:
// an etcd of the lab's own, and ClusterIPs in a service range that
// overlaps no network of the lab, whose first address (the API server's
// own kubernetes service) no service of the topology takes.
func (c *Cluster) validateKubernetes(at string, network netip.Prefix, pools []ipam.Pool) error {
	if !c.Kubernetes {
		return nil
	}
	if c.Etcd != nil {
		return topoErr(at+".kubernetes", "a cluster on Kubernetes runs its API server on the lab's own etcd: drop etcd, or drop kubernetes")
	}
	r, err := c.serviceRange()
	if err != nil {
		return topoErr(at+".services", "%v", err)
	}
	if r.Overlaps(network) {
		return topoErr(at+".services", "the API server's service range %s (the smallest /%d or wider that holds every ClusterIP) overlaps the lab network %s: move the ClusterIPs", r, serviceRangeMinBits, network)
	}
	for _, p := range pools {
		if r.Overlaps(p.IPv4[0]) {
			return topoErr(at+".services", "the API server's service range %s (the smallest /%d or wider that holds every ClusterIP) overlaps the pod CIDR %s: move the ClusterIPs", r, serviceRangeMinBits, p.IPv4[0])
		}
	}
	apiIP := r.Addr().Next()
	for i, s := range c.Services {
		if s.ClusterIP == apiIP.String() {
			return topoErr(fmt.Sprintf("%s.services[%d].clusterIP", at, i), "%s is the API server's own kubernetes service (the first address of the service range %s): pick another", apiIP, r)
		}
	}
	return nil
}

// serviceRange is a kubernetes cluster's service range (see
// serviceRangeMinBits). The ClusterIPs are validated.
func (c *Cluster) serviceRange() (netip.Prefix, error) {
	if len(c.Services) == 0 {
		return defaultServiceRange, nil
	}
	first := netip.MustParseAddr(c.Services[0].ClusterIP)
	for bits := serviceRangeMinBits; bits >= serviceRangeMaxBits; bits-- {
		r := netip.PrefixFrom(first, bits).Masked()
		if !slices.ContainsFunc(c.Services, func(s ServiceSpec) bool { return !r.Contains(netip.MustParseAddr(s.ClusterIP)) }) {
			return r, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("the ClusterIPs do not fit in one /%d, the widest service range the API server takes: put them closer together (like 10.96.0.0/24)", serviceRangeMaxBits)
}
