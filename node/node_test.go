package node_test

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/meshplane/meshplane/node"
)

func TestRoundTrip(t *testing.T) {
	r := node.Record{
		Name: "n1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.192.0.0/24")},
		Usage: []node.CIDRUsage{{CIDR: netip.MustParsePrefix("10.192.0.0/24"), Used: 3, Free: 250}},
		IPs:   []netip.Addr{netip.MustParseAddr("10.0.0.1")}, GossipAddr: "10.0.0.1:7946",
		Labels: map[string]string{"zone": "a"}, Version: "v1", ClusterID: 7, PolicyRevision: 42,
	}
	got, err := node.Decode("n1", r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("Decode(Encode(r)) = %+v, want %+v", got, r)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct{ name, key, value string }{
		{"not JSON", "n1", `{`},
		{"other node's record", "n1", `{"name":"n2"}`},
		{"unmasked CIDR", "n1", `{"name":"n1","podCIDRs":["10.192.0.1/24"]}`},
		{"bad IP", "n1", `{"name":"n1","ips":["10.0.0.300"]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := node.Decode(tt.key, []byte(tt.value)); !errors.Is(err, node.ErrInvalid) {
				t.Fatalf("Decode(%q, %s) = %v, want an error wrapping ErrInvalid", tt.key, tt.value, err)
			}
		})
	}
}

// FuzzDecode feeds arbitrary node records to the decoder the agents' watch
// caches use: no panic, and what it accepts round-trips.
func FuzzDecode(f *testing.F) {
	f.Add("n1", []byte(`{"name":"n1","podCIDRs":["10.192.0.0/24"],"ips":["10.0.0.1"],"gossipAddr":"10.0.0.1:7946","labels":{"a":"b"},"version":"v1","clusterID":1}`))
	f.Add("n2", []byte(`{"name":"n2","podCIDRs":null}`))
	f.Fuzz(func(t *testing.T, name string, value []byte) {
		r, err := node.Decode(name, value)
		if err != nil {
			return
		}
		if _, err := node.Decode(name, r.Encode()); err != nil {
			t.Fatalf("round trip of %s: %v", r.Encode(), err)
		}
	})
}
