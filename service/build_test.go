package service

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func TestBuild(t *testing.T) {
	ip := netip.MustParseAddr
	ep := func(addr, node string, ready, serving, terminating bool, ports map[string]uint16) Endpoint {
		return Endpoint{IP: ip(addr), Node: node, Ports: ports, Ready: ready, Serving: serving, Terminating: terminating}
	}
	http := map[string]uint16{"http": 8080, "dns": 53}
	spec := Spec{
		Namespace: "default", Name: "web",
		ClusterIPs: []netip.Addr{ip("10.96.0.10"), ip("fd00::10")},
		Ports: []Port{
			{Name: "http", Protocol: TCP, Port: 80, NodePort: 30080},
			{Name: "dns", Protocol: UDP, Port: 53},
		},
		SessionAffinity:       AffinityClientIP,
		InternalTrafficPolicy: TrafficLocal,
	}
	be := func(addr, node string, term bool) Backend {
		return Backend{Address: netip.MustParseAddrPort(addr), Node: node, Terminating: term}
	}
	tests := []struct {
		name string
		eps  []Endpoint
		want [][]Backend // per frontend: v4 http, v4 dns, v6 http, v6 dns
	}{
		{"ready only, sorted, by family", []Endpoint{
			ep("10.0.1.2", "n2", true, true, false, http),
			ep("10.0.0.1", "n1", true, true, false, http),
			ep("fd01::1", "n1", true, true, false, map[string]uint16{"http": 8443}),
			ep("10.0.0.9", "n1", false, true, true, http),
			ep("10.0.0.8", "n1", false, false, false, http),
		}, [][]Backend{
			{be("10.0.0.1:8080", "n1", false), be("10.0.1.2:8080", "n2", false)},
			{be("10.0.0.1:53", "n1", false), be("10.0.1.2:53", "n2", false)},
			{be("[fd01::1]:8443", "n1", false)},
			nil,
		}},
		{"terminating stand in when none is ready", []Endpoint{
			ep("10.0.0.9", "n1", false, true, true, http),
			ep("10.0.0.7", "n1", false, false, true, http),
		}, [][]Backend{
			{be("10.0.0.9:8080", "n1", true)},
			{be("10.0.0.9:53", "n1", true)},
			nil, nil,
		}},
		{"ready wins per port", []Endpoint{
			ep("10.0.0.9", "n1", false, true, true, http),
			ep("10.0.0.1", "n1", true, true, false, map[string]uint16{"http": 8080}),
		}, [][]Backend{
			{be("10.0.0.1:8080", "n1", false)},
			{be("10.0.0.9:53", "n1", true)},
			nil, nil,
		}},
		{"no endpoints", nil, [][]Backend{nil, nil, nil, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Build(spec, tt.eps)
			if err != nil {
				t.Fatal(err)
			}
			if s.SessionAffinity != AffinityClientIP || s.AffinityTimeout != DefaultAffinityTimeout || s.InternalTrafficPolicy != TrafficLocal {
				t.Fatalf("Build: service fields %+v", s)
			}
			if len(s.Frontends) != 4 {
				t.Fatalf("Build: %d frontends, want 4", len(s.Frontends))
			}
			wantFE := []string{"10.96.0.10:80", "10.96.0.10:53", "[fd00::10]:80", "[fd00::10]:53"}
			for i, fe := range s.Frontends {
				if fe.Address.String() != wantFE[i] {
					t.Errorf("frontend %d = %s, want %s", i, fe.Address, wantFE[i])
				}
				if want := uint16(0); i%2 == 0 && fe.NodePort != 30080 || i%2 == 1 && fe.NodePort != want {
					t.Errorf("frontend %d node port %d", i, fe.NodePort)
				}
				if !reflect.DeepEqual(fe.Backends, tt.want[i]) {
					t.Errorf("frontend %s backends = %v, want %v", fe.Address, fe.Backends, tt.want[i])
				}
			}
		})
	}
}

func TestBuildInvalid(t *testing.T) {
	_, err := Build(Spec{Namespace: "default", Name: "Web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
		Ports: []Port{{Protocol: TCP, Port: 80}}, AffinityTimeout: time.Minute}, nil)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Build(bad) = %v, want ErrInvalid", err)
	}
	_, err = Build(Spec{Namespace: "default", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
		Ports: []Port{{Protocol: TCP, Port: 80}, {Protocol: UDP, Port: 53}}}, nil)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Build(two unnamed ports) = %v, want ErrInvalid", err)
	}
	s, err := Build(Spec{Namespace: "default", Name: "headless"}, nil)
	if err != nil || len(s.Frontends) != 0 {
		t.Fatalf("Build(headless) = %+v, %v", s, err)
	}
}
