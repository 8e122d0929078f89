package policy

import (
	"errors"
	"reflect"
	"testing"
)

// fuzzEngine runs a parsed policy through an engine with a few identities
// and an endpoint, to catch panics on odd but valid policies.
func fuzzEngine(t *testing.T, p *Policy) {
	e := newTestEngine(t, p)
	e.SetEndpoint(Endpoint{ID: 9, Labels: podLabelSet(t, localCluster, p.Namespace, map[string]string{"app": "web"}, nil)})
	_ = e.CIDRs()
	e.DeletePolicy(p.Namespace, p.Name)
	for ep := uint32(1); ep < 10; ep++ {
		if n := len(e.Entries(ep)); n != 0 {
			t.Fatalf("endpoint %d has %d entries after the only policy was deleted", ep, n)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(realistic))
	f.Add([]byte(npDoc("podSelector: {}")))
	f.Add([]byte(npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: http}, {port: 80, endPort: 90}]")))
	f.Add([]byte(meshDoc("podSelector: {}\n  egress:\n  - to: [{podSelector: {}, clusters: ['*']}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]")))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: []\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, p := range ps {
			if err := p.Validate(); err != nil {
				t.Fatalf("Parse returned an invalid policy: %v", err)
			}
			b, err := p.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			q, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			if !reflect.DeepEqual(p, q) {
				t.Fatalf("Decode(Encode(p)) = %+v, want %+v", q, p)
			}
			m, err := p.Manifest()
			if err != nil {
				t.Fatalf("Manifest: %v", err)
			}
			back, err := Parse(m)
			if err != nil {
				t.Fatalf("Parse(Manifest()) of\n%s: %v", m, err)
			}
			if !reflect.DeepEqual(back[0], p) {
				t.Fatalf("Parse(Manifest(p)) = %+v, want %+v", back[0], p)
			}
			fuzzEngine(t, p)
		}
	})
}

func FuzzDecode(f *testing.F) {
	ps, err := Parse([]byte(realistic))
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range ps {
		b, err := p.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"kind":"NetworkPolicy","name":"x","spec":{"podSelector":{}}}`))
	f.Add([]byte(`{"kind":"NetworkPolicy","name":"x","spec":{"podSelector":{},"ingress":[{"ports":[{"port":1e3}]}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		b, err := p.Encode()
		if err != nil {
			t.Fatalf("Encode of a decoded policy: %v", err)
		}
		q, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("Decode(Encode(p)) = %+v, want %+v", q, p)
		}
		if b2, _ := q.Encode(); string(b2) != string(b) {
			t.Fatalf("Encode is not stable:\n%s\n%s", b, b2)
		}
		fuzzEngine(t, p)
	})
}
