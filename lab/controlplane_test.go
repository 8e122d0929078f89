package lab

import (
	"net/netip"
	"testing"

	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/service"
)

// TestTopologySource: the lab's desired state is what a control plane
// would write for the same objects: pods recorded (with or without an
// IP), the topology's namespaces, and services built by service.Build from
// the running pods their selectors pick.
func TestTopologySource(t *testing.T) {
	topo, err := ParseTopology([]byte(base + `
      - {name: multi, namespace: prod, clusterIP: 10.96.0.11, selector: {app: a}, ports: [{port: 80, targetPort: 8080}, {port: 53, protocol: UDP}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	l := &Lab{st: &state{Topology: *topo, Pods: []*podState{
		{Pod: Pod{Cluster: "c1", Node: "n1", Namespace: "prod", Name: "a", IP: netip.MustParseAddr("10.200.0.5"),
			Labels: map[string]string{"app": "a"}, Ports: []PortSpec{{Name: "http", Port: 80, Protocol: "TCP"}}}},
		{Pod: Pod{Cluster: "c1", Node: "n2", Namespace: "prod", Name: "b", Labels: map[string]string{"app": "a"}}}, // no IP yet
	}}}
	src, err := l.topologySource("c1")
	if err != nil {
		t.Fatal(err)
	}
	k := src.Kinds()
	a, ok, err := k.Pods.Get("prod/a")
	if err != nil || !ok || a.Node != "n1" || a.Key() != "n1/prod/a" || len(a.Ports) != 1 || a.Ports[0].Protocol != pod.ProtoTCP {
		t.Errorf("pod prod/a = %+v, %v, %v", a, ok, err)
	}
	if _, ok, _ := k.Pods.Get("prod/b"); !ok {
		t.Errorf("pod prod/b without an IP is not desired: its metadata must precede its CNI ADD")
	}
	if ns, ok, _ := k.Namespaces.Get("prod"); !ok || ns.Labels["env"] != "prod" {
		t.Errorf("namespace prod = %+v, %v", ns, ok)
	}
	web, ok, err := k.Services.Get("prod/web")
	if err != nil || !ok {
		t.Fatalf("service prod/web: %v, %v", ok, err)
	}
	want, err := service.Build(service.Spec{Namespace: "prod", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []service.Port{{Protocol: service.TCP, Port: 80}}},
		[]service.Endpoint{{IP: netip.MustParseAddr("10.200.0.5"), Node: "n1", Ports: map[string]uint16{"": 80}, Ready: true, Serving: true}})
	if err != nil {
		t.Fatal(err)
	}
	wb, _ := want.Encode()
	gb, _ := web.Encode()
	if string(wb) != string(gb) {
		t.Errorf("service prod/web = %s, want %s", gb, wb)
	}
	multi, _, err := k.Services.Get("prod/multi")
	if err != nil || len(multi.Frontends) != 2 {
		t.Fatalf("service prod/multi = %+v, %v", multi, err)
	}
	for _, fe := range multi.Frontends {
		wantPort := map[uint16]uint16{80: 8080, 53: 53}[fe.Address.Port()]
		if len(fe.Backends) != 1 || fe.Backends[0].Address.Port() != wantPort {
			t.Errorf("frontend %s backends %v, want one at port %d", fe.Address, fe.Backends, wantPort)
		}
	}
}
