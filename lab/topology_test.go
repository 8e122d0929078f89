package lab

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// base is a valid topology; the table cases change one thing in it.
const base = `
name: t
clusters:
  - name: c1
    id: 1
    podCIDR: 10.200.0.0/16
    namespaces:
      - {name: prod, labels: {env: prod}}
    nodes:
      - name: n1
        pods:
          - {name: a, namespace: prod, labels: {app: a}, ports: [{name: http, port: 80}]}
      - name: n2
    services:
      - {name: web, namespace: prod, clusterIP: 10.96.0.10, selector: {app: a}, ports: [{port: 80}]}
`

func TestParseTopologyDemo(t *testing.T) {
	topo, err := LoadTopology("testdata/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if topo.Name != "demo" || len(topo.Clusters) != 1 || len(topo.Clusters[0].Nodes) != 2 {
		t.Fatalf("demo: %+v", topo)
	}
	c := topo.Clusters[0]
	if c.Nodes[0].IP != "192.168.77.11" || c.Nodes[1].IP != "192.168.77.12" {
		t.Errorf("node IPs %s, %s; want .11 and .12", c.Nodes[0].IP, c.Nodes[1].IP)
	}
	if len(c.Services) != 1 || c.Services[0].Ports[1].TargetPort != 53 || c.Services[0].Ports[1].Protocol != "UDP" {
		t.Errorf("service defaults not filled in: %+v", c.Services)
	}
	ns := map[string]bool{}
	var web int
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			ns[p.Namespace] = true
			if selects(c.Services[0].Selector, p.Labels) {
				web++
			}
		}
	}
	if !ns["prod"] || !ns["dev"] || web != 2 {
		t.Errorf("demo should have pods in prod and dev and 2 backends of web; got namespaces %v, %d backends", ns, web)
	}
}

func TestParseTopologyDefaults(t *testing.T) {
	topo, err := ParseTopology([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	c := topo.Clusters[0]
	if topo.Network != "192.168.77.0/24" || c.MaskSize != 24 || c.Nodes[0].Pods[0].Ports[0].Protocol != "TCP" || c.Services[0].Ports[0].TargetPort != 80 {
		t.Fatalf("defaults not filled in: %+v", topo)
	}
	// An address given by hand is skipped by the automatic ones.
	topo, err = ParseTopology([]byte(strings.Replace(base, "- name: n2", "- name: n2\n        ip: 192.168.77.11", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if got := topo.Clusters[0].Nodes[0].IP; got != "192.168.77.12" {
		t.Fatalf("n1 got %s, want 192.168.77.12 (.11 is n2's)", got)
	}
}

func TestParseTopologyErrors(t *testing.T) {
	tests := []struct {
		name      string
		old, new  string // replace old by new in base
		also      [2]string
		wantField string // the error must name it
		wantText  string
	}{
		{"unknown field", "podCIDR:", "pod_cidr:", [2]string{}, "pod_cidr", "unknown field"},
		{"duplicate field", "    id: 1\n", "    id: 1\n    id: 2\n", [2]string{}, "\"id\"", "already set"},
		{"bad lab name", "name: t\n", "name: T_1\n", [2]string{}, "name", "lowercase"},
		{"long lab name", "name: t\n", "name: abcdefghijklmnopq\n", [2]string{}, "name", "1-16"},
		{"bad network", "name: t\n", "name: t\nnetwork: 192.168.77.0/33\n", [2]string{}, "network", "not an IPv4 CIDR"},
		{"network host bits", "name: t\n", "name: t\nnetwork: 192.168.77.1/24\n", [2]string{}, "network", "did you mean 192.168.77.0/24"},
		{"no clusters", base, "name: t\n", [2]string{}, "clusters", "at least one cluster"},
		{"bad cluster id", "id: 1", "id: 300", [2]string{}, "clusters[0].id", "1-255"},
		{"bad pod CIDR", "10.200.0.0/16", "10.200.0.0/99", [2]string{}, "clusters[0].podCIDR", "not an IPv4 CIDR"},
		{"pod CIDR host bits", "10.200.0.0/16", "10.200.0.1/16", [2]string{}, "clusters[0].podCIDR", "did you mean 10.200.0.0/16"},
		{"pod CIDR in network", "10.200.0.0/16", "192.168.0.0/16", [2]string{}, "clusters[0].podCIDR", "overlaps the lab network"},
		{"mask too small", "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    maskSize: 16", [2]string{}, "clusters[0].podCIDR", "mask size"},
		{"too many nodes", "      - name: n2\n", "      - name: n2\n      - name: n3\n", [2]string{"podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    maskSize: 17"}, "clusters[0].nodes", "holds only 2"},
		{"https etcd", "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    etcd: {endpoints: [\"https://127.0.0.1:2379\"]}", [2]string{}, "clusters[0].etcd.endpoints[0]", "no TLS"},
		{"no nodes", "    nodes:\n", "    nodes: []\n    x:\n", [2]string{}, "", "unknown field"},
		{"duplicate node", "- name: n2", "- name: n1", [2]string{}, "clusters[0].nodes[1].name", "twice"},
		{"bad node name", "- name: n2", "- name: N2", [2]string{}, "clusters[0].nodes[1].name", "DNS label"},
		{"node IP outside", "- name: n2", "- name: n2\n        ip: 10.0.0.1", [2]string{}, "clusters[0].nodes[1].ip", "outside the lab network"},
		{"node IP broadcast", "- name: n2", "- name: n2\n        ip: 192.168.77.255", [2]string{}, "clusters[0].nodes[1].ip", "broadcast"},
		{"node IP twice", "- name: n2", "- name: n2\n        ip: 192.168.77.5\n      - name: n3\n        ip: 192.168.77.5", [2]string{}, "clusters[0].nodes[2].ip", "node c1/n2 too"},
		{"pod in unknown namespace", "{name: a, namespace: prod", "{name: a, namespace: dev", [2]string{}, "clusters[0].nodes[0].pods[0].namespace", "not a namespace"},
		{"pod on unknown node", "      - name: n2\n", "      - name: n2\n        node: n3\n", [2]string{}, "node", "unknown field"},
		{"duplicate pod", "      - name: n2\n", "      - name: n2\n        pods: [{name: a, namespace: prod}]\n", [2]string{}, "clusters[0].nodes[1].pods[0].name", "n1 already"},
		{"bad pod label", "labels: {app: a}", "labels: {\"a b\": a}", [2]string{}, "clusters[0].nodes[0].pods[0].labels", "key"},
		{"bad port", "port: 80}]}", "port: 0}]}", [2]string{}, "clusters[0].nodes[0].pods[0].ports[0].port", "1-65535"},
		{"bad protocol", "port: 80}]}", "port: 80, protocol: SCTP}]}", [2]string{}, "clusters[0].nodes[0].pods[0].ports[0].protocol", "TCP or UDP"},
		{"bad port name", "name: http", "name: HTTP", [2]string{}, "clusters[0].nodes[0].pods[0].ports[0].name", "lowercase"},
		{"duplicate port", "ports: [{name: http, port: 80}]", "ports: [{port: 80}, {port: 80}]", [2]string{}, "clusters[0].nodes[0].pods[0].ports[1].port", "twice"},
		{"long names", "{name: a, namespace: prod", "{name: " + strings.Repeat("a", 63) + ", namespace: prod", [2]string{}, "", ""}, // fits: 255 is roomy
		{"service without selector", "selector: {app: a}", "selector: {}", [2]string{}, "clusters[0].services[0].selector", "needs a selector"},
		{"service bad selector", "selector: {app: a}", "selector: {\"a b\": a}", [2]string{}, "clusters[0].services[0].selector", "key"},
		{"service no ports", "ports: [{port: 80}]", "ports: []", [2]string{}, "clusters[0].services[0].ports", "at least one port"},
		{"service bad target port", "ports: [{port: 80}]", "ports: [{port: 80, targetPort: 70000}]", [2]string{}, "clusters[0].services[0].ports[0].targetPort", "1-65535"},
		{"service duplicate port", "ports: [{port: 80}]", "ports: [{port: 80}, {port: 80, protocol: TCP}]", [2]string{}, "clusters[0].services[0].ports[1].port", "twice"},
		{"service bad IP", "10.96.0.10", "10.96.0", [2]string{}, "clusters[0].services[0].clusterIP", "unicast IPv4"},
		{"service IP in pods", "10.96.0.10", "10.200.3.4", [2]string{}, "clusters[0].services[0].clusterIP", "inside the pod CIDR"},
		{"service IP in network", "10.96.0.10", "192.168.77.9", [2]string{}, "clusters[0].services[0].clusterIP", "inside the lab network"},
		{"service unknown namespace", "{name: web, namespace: prod", "{name: web, namespace: dev", [2]string{}, "clusters[0].services[0].namespace", "not a namespace"},
		{"duplicate namespace", "- {name: prod, labels: {env: prod}}", "- {name: prod}\n      - {name: prod}", [2]string{}, "clusters[0].namespaces[1].name", "twice"},
		{"not yaml", base, "name: [", [2]string{}, "", "invalid lab topology"},
		{"bad routing", "name: t\n", "name: t\nrouting: bgp\n", [2]string{}, "routing", "use tunnel"},
		{"native routing", "name: t\n", "name: t\nrouting: native\n", [2]string{}, "", ""},
		{"subnet", "name: t\n", "name: t\nsubnets: [{name: far, network: 192.168.78.0/24}]\n", [2]string{"- name: n2", "- name: n2\n        subnet: far"}, "", ""},
		{"unknown subnet", "- name: n2", "- name: n2\n        subnet: far", [2]string{}, "clusters[0].nodes[1].subnet", "not a subnet of the lab"},
		{"subnet overlaps the network", "name: t\n", "name: t\nsubnets: [{name: far, network: 192.168.77.128/25}]\n", [2]string{}, "subnets[0].network", "overlaps the lab network"},
		{"subnet overlaps pods", "name: t\n", "name: t\nsubnets: [{name: far, network: 10.200.1.0/24}]\n", [2]string{}, "clusters[0].podCIDR", "overlaps the subnet far"},
		{"duplicate subnet", "name: t\n", "name: t\nsubnets: [{name: far, network: 192.168.78.0/24}, {name: far, network: 192.168.79.0/24}]\n", [2]string{}, "subnets[1].name", "twice"},
		{"long subnet name", "name: t\n", "name: t\nsubnets: [{name: abcdefghijklm, network: 192.168.78.0/24}]\n", [2]string{}, "subnets[0].name", "at most 12"},
		{"node IP outside its subnet", "name: t\n", "name: t\nsubnets: [{name: far, network: 192.168.78.0/24}]\n", [2]string{"- name: n2", "- name: n2\n        subnet: far\n        ip: 192.168.77.30"}, "clusters[0].nodes[1].ip", "outside"},
		{"node on the router's address", "name: t\n", "name: t\nsubnets: [{name: far, network: 192.168.78.0/24}]\n", [2]string{"- name: n2", "- name: n2\n        ip: 192.168.77.1"}, "subnets", "router's address"},
		{"service IP in a subnet", "name: t\n", "name: t\nsubnets: [{name: far, network: 10.96.0.0/24}]\n", [2]string{}, "clusters[0].services[0].clusterIP", "inside the subnet far"},
		{"kubernetes", "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    kubernetes: true", [2]string{}, "", ""},
		{"kubernetes with external etcd", "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    kubernetes: true\n    etcd: {endpoints: [\"http://127.0.0.1:2379\"]}", [2]string{}, "clusters[0].kubernetes", "drop etcd"},
		{"kubernetes service IP", "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    kubernetes: true", [2]string{"10.96.0.10", "10.96.0.1"}, "clusters[0].services[0].clusterIP", "own kubernetes service"},
		{"kubernetes service range too wide", "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    kubernetes: true", [2]string{"      - {name: web, namespace: prod, clusterIP: 10.96.0.10, selector: {app: a}, ports: [{port: 80}]}\n", "      - {name: web, namespace: prod, clusterIP: 10.96.0.10, selector: {app: a}, ports: [{port: 80}]}\n" + "      - {name: web2, namespace: prod, clusterIP: 10.160.0.10, selector: {app: a}, ports: [{port: 80}]}\n"}, "clusters[0].services", "one /12"},
		{"kubernetes service range over pods", "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    kubernetes: true", [2]string{"clusterIP: 10.96.0.10, selector: {app: a}, ports: [{port: 80}]}\n", "clusterIP: 10.199.0.10, selector: {app: a}, ports: [{port: 80}]}\n      - {name: web2, namespace: prod, clusterIP: 10.201.0.10, selector: {app: a}, ports: [{port: 80}]}\n"}, "clusters[0].services", "overlaps the pod CIDR 10.200.0.0/16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(base, tt.old) {
				t.Fatalf("test broken: %q is not in the base topology", tt.old)
			}
			in := strings.Replace(base, tt.old, tt.new, 1)
			if tt.also[0] != "" {
				in = strings.Replace(in, tt.also[0], tt.also[1], 1)
			}
			_, err := ParseTopology([]byte(in))
			if tt.wantText == "" {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				return
			}
			if !errors.Is(err, ErrTopology) {
				t.Fatalf("error %v does not wrap ErrTopology", err)
			}
			if !strings.Contains(err.Error(), tt.wantField) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %q should name %q and say %q", err, tt.wantField, tt.wantText)
			}
		})
	}
}

func TestParseTopologyExternals(t *testing.T) {
	withExt := base + `
externals:
  - {name: ext1, ip: 192.168.77.11, ports: [{port: 80}, {port: 53, protocol: UDP}]}
`
	topo, err := ParseTopology([]byte(withExt))
	if err != nil {
		t.Fatal(err)
	}
	if got := topo.Clusters[0].Nodes[0].IP; got != "192.168.77.12" {
		t.Errorf("n1 got %s, want 192.168.77.12 (.11 is ext1's)", got)
	}
	if p := topo.Externals[0].Ports[0]; p.Protocol != "TCP" {
		t.Errorf("external port protocol not filled in: %+v", p)
	}
	tests := []struct {
		name      string
		old, new  string // replace old by new in withExt
		wantField string
		wantText  string
	}{
		{"bad name", "name: ext1", "name: Ext1", "externals[0].name", "DNS label"},
		{"twice", "  - {name: ext1, ip: 192.168.77.11,", "  - {name: ext1, ip: 192.168.77.9}\n  - {name: ext1, ip: 192.168.77.11,", "externals[1].name", "twice"},
		{"no IP", "ip: 192.168.77.11, ", "", "externals[0].ip", "not an IPv4 address"},
		{"IP outside", "ip: 192.168.77.11", "ip: 10.1.2.3", "externals[0].ip", "outside the lab network"},
		{"IP broadcast", "ip: 192.168.77.11", "ip: 192.168.77.255", "externals[0].ip", "broadcast"},
		{"IP of a node", "      - name: n2\n", "      - name: n2\n        ip: 192.168.77.11\n", "externals[0].ip", "node c1/n2 too"},
		{"bad port", "[{port: 80}, ", "[{port: 0}, ", "externals[0].ports[0].port", "1-65535"},
		{"bad protocol", "protocol: UDP", "protocol: SCTP", "externals[0].ports[1].protocol", "TCP or UDP"},
		{"unknown field", "ip: 192.168.77.11", "ip: 192.168.77.11, node: n1", "node", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(withExt, tt.old) {
				t.Fatalf("test broken: %q is not in the topology", tt.old)
			}
			_, err := ParseTopology([]byte(strings.Replace(withExt, tt.old, tt.new, 1)))
			if !errors.Is(err, ErrTopology) {
				t.Fatalf("error %v does not wrap ErrTopology", err)
			}
			if !strings.Contains(err.Error(), tt.wantField) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %q should name %q and say %q", err, tt.wantField, tt.wantText)
			}
		})
	}
}

// TestProbeEnds resolves probe sources and targets with externals in a
// lab's state, without a lab: the names, the kinds and the ambiguities.
func TestProbeEnds(t *testing.T) {
	n1 := &nodeState{Node: Node{Cluster: "c1", Name: "n1"}}
	st := &state{
		Name:     "t",
		Clusters: []*clusterState{{Name: "c1", Nodes: []*nodeState{n1}}},
		Pods: []*podState{
			{Pod: Pod{Cluster: "c1", Node: "n1", Namespace: "prod", Name: "web", IP: netip.MustParseAddr("10.200.0.2"), Ports: []PortSpec{{Port: 80, Protocol: "TCP"}}}},
			{Pod: Pod{Cluster: "c1", Node: "n1", Namespace: "prod", Name: "dup", IP: netip.MustParseAddr("10.200.0.3")}},
		},
		Externals: []*externalState{
			{External: External{Name: "ext1", IP: netip.MustParseAddr("192.168.77.200"), Ports: []PortSpec{{Port: 80, Protocol: "TCP"}, {Port: 53, Protocol: "UDP"}}}},
			{External: External{Name: "dup", IP: netip.MustParseAddr("192.168.77.201")}},
		},
	}
	sources := []struct {
		from, want, wantErr string
	}{
		{"ext:ext1", "ext:ext1", ""},
		{"ext1", "ext:ext1", ""},
		{"web", "c1/prod/web", ""},
		{"pod:dup", "c1/prod/dup", ""},
		{"ext:dup", "ext:dup", ""},
		{"dup", "", "names a pod and an external"},
		{"ext:web", "", "not found"},
		{"pod:ext1", "", "not found"},
		{"svc:prod/web", "", "not a service"},
	}
	for _, tt := range sources {
		t.Run("from "+tt.from, func(t *testing.T) {
			src, err := st.findSource(tt.from)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("findSource(%q) = %+v, %v; want an error saying %q", tt.from, src, err, tt.wantErr)
				}
				return
			}
			if err != nil || src.ref != tt.want {
				t.Fatalf("findSource(%q) = %+v, %v; want %s", tt.from, src, err, tt.want)
			}
		})
	}
	ext, _ := st.findSource("ext1")
	web, _ := st.findSource("web")
	targets := []struct {
		src      probeSource
		to       string
		port     uint16
		proto    string
		want     string
		wantNode int // nodes whose flows are searched
		wantErr  string
	}{
		{web, "ext:ext1", 0, "TCP", "192.168.77.200:80", 1, ""},
		{web, "ext1", 0, "UDP", "192.168.77.200:53", 1, ""},
		{web, "ext:ext1", 8080, "TCP", "192.168.77.200:8080", 1, ""},
		{ext, "web", 0, "TCP", "10.200.0.2:80", 1, ""},
		{ext, "ext:dup", 7, "TCP", "192.168.77.201:7", 0, ""},
		{web, "dup", 80, "TCP", "", 0, "names a pod and an external"},
		{web, "ext:ext1", 0, "SCTP", "", 0, "0 SCTP ports"},
		{web, "ext:nope", 80, "TCP", "", 0, "not found"},
	}
	for _, tt := range targets {
		t.Run(tt.src.ref+" to "+tt.to, func(t *testing.T) {
			got, nodes, err := st.resolveTarget(tt.src, tt.to, tt.port, tt.proto)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("resolveTarget = %s, %v; want an error saying %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.String() != tt.want || len(nodes) != tt.wantNode {
				t.Fatalf("resolveTarget = %s, %d nodes, %v; want %s, %d nodes", got, len(nodes), err, tt.want, tt.wantNode)
			}
		})
	}
}

func TestTopologyMultiCluster(t *testing.T) {
	two := base + `
  - name: c2
    id: 2
    podCIDR: 10.201.0.0/16
    namespaces: [{name: prod}]
    nodes: [{name: n1}]
`
	topo, err := ParseTopology([]byte(two))
	if err != nil {
		t.Fatal(err)
	}
	if got := topo.Clusters[1].Nodes[0].IP; got != "192.168.77.13" {
		t.Errorf("c2/n1 got %s, want 192.168.77.13: node addresses are lab-wide", got)
	}
	for _, tt := range []struct{ old, new, want string }{
		{"id: 2", "id: 1", "clusters[1].id"},
		{"name: c2", "name: c1", "clusters[1].name"},
		{"10.201.0.0/16", "10.200.128.0/17", "clusters[1].podCIDR"},
		{"10.201.0.0/16", "10.96.0.0/16", "ClusterIP 10.96.0.10 is inside the pod CIDR 10.96.0.0/16 of cluster c2"},
	} {
		_, err := ParseTopology([]byte(strings.Replace(two, tt.old, tt.new, 1)))
		if !errors.Is(err, ErrTopology) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s -> %s: error %v, want one naming %q", tt.old, tt.new, err, tt.want)
		}
	}
}

// TestParseTopologySubnets: nodes get addresses of their own network from
// .11, the router the first host of each.
func TestParseTopologySubnets(t *testing.T) {
	in := strings.Replace(strings.Replace(base, "name: t\n", "name: t\nsubnets: [{name: far, network: 192.168.78.0/24}]\n", 1),
		"- name: n2", "- name: n2\n        subnet: far", 1)
	topo, err := ParseTopology([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	nodes := topo.Clusters[0].Nodes
	if nodes[0].IP != "192.168.77.11" || nodes[1].IP != "192.168.78.11" || topo.Routing != RoutingTunnel {
		t.Errorf("node IPs %s, %s, routing %q; want 192.168.77.11, 192.168.78.11, tunnel", nodes[0].IP, nodes[1].IP, topo.Routing)
	}
	segs := topo.segments()
	if segs[""].router.String() != "192.168.77.1" || segs["far"].router.String() != "192.168.78.1" || segs["far"].bridge != "br1" {
		t.Errorf("segments %+v", segs)
	}
	if n := routerPortName("abcdefghijkl"); len(n) > 15 {
		t.Errorf("router port name %q is longer than IFNAMSIZ allows", n)
	}
}

func TestNetnsNames(t *testing.T) {
	tests := []struct {
		lab, name string
		want      bool
	}{
		{"demo", "mp-demo-lab", true},
		{"demo", "mp-demo-n_c1_node1", true},
		{"demo", "mp-demo-p_c1_prod_web-1", true},
		{"demo", "mp-demo-x_ext1", true},
		{"demo", "mp-demo-router", true},
		{"demo", "mp-demo-x-router", false}, // lab demo-x's
		{"demo", "mp-demo-x-x_ext1", false}, // lab demo-x's
		{"demo", "mp-demo-x-lab", false},    // lab demo-x's
		{"demo", "mp-demo-x-n_c1_node1", false},
		{"demo", "mp-demo-", false},
		{"demo", "mp-demox-lab", false},
		{"demo", "other", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isLabNetns(tt.lab, tt.name); got != tt.want {
				t.Fatalf("isLabNetns(%q, %q) = %v", tt.lab, tt.name, got)
			}
		})
	}
	if n := hostVethName("c1", "prod", "web"); len(n) != 14 || n[:3] != "lxc" {
		t.Errorf("host veth name %q: want lxc and 11 hex characters", n)
	}
	if n := bridgePortName("a-very-long-cluster-name", "a-very-long-node-name"); len(n) > 15 {
		t.Errorf("bridge port name %q is longer than IFNAMSIZ allows", n)
	}
	if n := externalPortName("a-very-long-external-name"); len(n) > 15 || n == bridgePortName("external", "a-very-long-external-name") {
		t.Errorf("external port name %q: too long, or a node's", n)
	}
}

// FuzzParseTopology feeds arbitrary files to ParseTopology: it must not
// panic, and what it accepts must validate again unchanged.
func FuzzParseTopology(f *testing.F) {
	f.Add([]byte(base))
	f.Add([]byte("name: x\nclusters: [{name: c, id: 1, podCIDR: 10.0.0.0/8, nodes: [{name: n}]}]"))
	f.Add([]byte("name: x\nclusters: [{name: c, id: 1, podCIDR: 10.0.0.0/8, nodes: [{name: n}]}]\nexternals: [{name: e, ip: 192.168.77.11, ports: [{port: 53, protocol: UDP}]}]"))
	f.Add([]byte("name: x\nnetwork: 10.0.0.0/28\nclusters: [{name: c, id: 9, podCIDR: 10.1.0.0/16, maskSize: 29, nodes: [{name: n, ip: 10.0.0.2}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		topo, err := ParseTopology(data)
		if err != nil {
			if !errors.Is(err, ErrTopology) {
				t.Fatalf("error %v does not wrap ErrTopology", err)
			}
			return
		}
		again, err := cloneTopology(topo)
		if err != nil {
			t.Fatal(err)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("an accepted topology does not validate again: %v", err)
		}
	})
}
