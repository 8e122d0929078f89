package service

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestDecodeOldValue reads a value written before the affinity, traffic
// policy and node port fields: it decodes with their zero values.
func TestDecodeOldValue(t *testing.T) {
	old := []byte(`{"namespace":"default","name":"web","frontends":[{"address":"10.96.0.1:80","protocol":"TCP","backends":[{"address":"10.0.0.1:8080","node":"n1"}]}]}`)
	s, err := Decode("default/web", old)
	if err != nil {
		t.Fatal(err)
	}
	if s.SessionAffinity != "" || s.AffinityTimeout != 0 || s.InternalTrafficPolicy != "" || s.ExternalTrafficPolicy != "" ||
		s.Frontends[0].NodePort != 0 || s.Frontends[0].Backends[0].Terminating {
		t.Fatalf("Decode(old) = %+v, want zero new fields", s)
	}
}

func TestValidate(t *testing.T) {
	fe := func(addr string, p Protocol, backends ...string) Frontend {
		f := Frontend{Address: netip.MustParseAddrPort(addr), Protocol: p}
		for _, b := range backends {
			f.Backends = append(f.Backends, Backend{Address: netip.MustParseAddrPort(b), Node: "n1"})
		}
		return f
	}
	tests := []struct {
		name string
		s    Service
		want string // "" = valid
	}{
		{"ok", Service{Namespace: "default", Name: "web", Frontends: []Frontend{fe("10.96.0.1:80", TCP, "10.0.0.1:8080")}}, ""},
		{"ok dual", Service{Namespace: "a", Name: "b", Frontends: []Frontend{fe("10.96.0.1:53", UDP), fe("[fd00::1]:53", UDP, "[fd00::2]:53")}}, ""},
		{"bad namespace", Service{Namespace: "Default", Name: "web"}, "namespace"},
		{"bad name", Service{Namespace: "default", Name: "web_1"}, "name"},
		{"no port", Service{Namespace: "a", Name: "b", Frontends: []Frontend{fe("10.96.0.1:0", TCP)}}, "port"},
		{"bad protocol", Service{Namespace: "a", Name: "b", Frontends: []Frontend{fe("10.96.0.1:80", "ICMP")}}, "protocol"},
		{"duplicate", Service{Namespace: "a", Name: "b", Frontends: []Frontend{fe("10.96.0.1:80", TCP), fe("10.96.0.1:80", TCP)}}, "twice"},
		{"mixed family", Service{Namespace: "a", Name: "b", Frontends: []Frontend{fe("10.96.0.1:80", TCP, "[fd00::1]:80")}}, "family"},
		{"affinity", Service{Namespace: "a", Name: "b", SessionAffinity: AffinityClientIP, AffinityTimeout: time.Hour, InternalTrafficPolicy: TrafficLocal, ExternalTrafficPolicy: TrafficCluster}, ""},
		{"bad affinity", Service{Namespace: "a", Name: "b", SessionAffinity: "Sticky"}, "sessionAffinity"},
		{"timeout without affinity", Service{Namespace: "a", Name: "b", AffinityTimeout: time.Hour}, "without ClientIP"},
		{"long timeout", Service{Namespace: "a", Name: "b", SessionAffinity: AffinityClientIP, AffinityTimeout: 25 * time.Hour}, "affinityTimeout"},
		{"bad traffic policy", Service{Namespace: "a", Name: "b", ExternalTrafficPolicy: "Node"}, "externalTrafficPolicy"},
		{"node port twice", Service{Namespace: "a", Name: "b", Frontends: []Frontend{
			{Address: netip.MustParseAddrPort("10.96.0.1:80"), Protocol: TCP, NodePort: 30080},
			{Address: netip.MustParseAddrPort("10.96.0.1:81"), Protocol: TCP, NodePort: 30080},
		}}, "node port"},
		{"node port dual", Service{Namespace: "a", Name: "b", Frontends: []Frontend{
			{Address: netip.MustParseAddrPort("10.96.0.1:80"), Protocol: TCP, NodePort: 30080},
			{Address: netip.MustParseAddrPort("[fd00::1]:80"), Protocol: TCP, NodePort: 30080},
		}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				b, _ := json.Marshal(tt.s)
				got, err := Decode(tt.s.Key(), b)
				if err != nil || got.Key() != tt.s.Key() || len(got.Frontends) != len(tt.s.Frontends) {
					t.Fatalf("Decode(Marshal) = %+v, %v", got, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

// FuzzDecode feeds arbitrary etcd values to Decode: it must not panic, and
// what it accepts must validate and encode back to the same service.
func FuzzDecode(f *testing.F) {
	f.Add("default/web", []byte(`{"namespace":"default","name":"web","frontends":[{"address":"10.96.0.1:80","protocol":"TCP","backends":[{"address":"10.0.0.1:8080","node":"n1"}]}]}`))
	f.Add("a/b", []byte(`{"namespace":"a","name":"b"}`))
	f.Add("a/b", []byte(`{"namespace":"a","name":"b","frontends":[{"address":"[::1]:1","protocol":"UDP"}]}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		s, err := Decode(key, value)
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid service: %v", err)
		}
		b, _ := json.Marshal(s)
		again, err := Decode(key, b)
		if err != nil || again.Key() != s.Key() {
			t.Fatalf("round trip: %v", err)
		}
	})
}
