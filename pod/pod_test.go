package pod

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func goodPod() Pod {
	return Pod{
		Namespace: "default", Name: "web-0", UID: "3f2c-11", Node: "node1",
		Labels:         map[string]string{"app": "web", "app.kubernetes.io/name": "web"},
		Ports:          []Port{{Name: "http", Port: 80, Protocol: ProtoTCP}, {Port: 53, Protocol: ProtoUDP}},
		ServiceAccount: "web",
	}
}

func TestPodRoundTrip(t *testing.T) {
	p := goodPod()
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if p.Key() != "node1/default/web-0" || p.Owner() != "default/web-0" {
		t.Fatalf("Key() = %q, Owner() = %q", p.Key(), p.Owner())
	}
	got, err := Decode(p.Key(), b)
	if err != nil || !reflect.DeepEqual(got, p) || !got.Equal(p) {
		t.Fatalf("Decode(Encode) = %+v, %v", got, err)
	}
	got, err = NodeDecoder("node1")("default/web-0", b)
	if err != nil || !got.Equal(p) {
		t.Fatalf("NodeDecoder = %+v, %v", got, err)
	}
	if _, err := NodeDecoder("node2")("default/web-0", b); !errors.Is(err, ErrInvalid) {
		t.Fatalf("NodeDecoder on another node = %v, want ErrInvalid", err)
	}
}

func TestPodValidate(t *testing.T) {
	tests := map[string]func(p *Pod){
		"namespace":        func(p *Pod) { p.Namespace = "a.b" },
		"empty name":       func(p *Pod) { p.Name = "" },
		"upper name":       func(p *Pod) { p.Name = "Web" },
		"no node":          func(p *Pod) { p.Node = "" },
		"node with slash":  func(p *Pod) { p.Node = "a/b" },
		"uid with slash":   func(p *Pod) { p.UID = "a/b" },
		"long uid":         func(p *Pod) { p.UID = strings.Repeat("u", 129) },
		"service account":  func(p *Pod) { p.ServiceAccount = "A" },
		"label key":        func(p *Pod) { p.Labels = map[string]string{"a b": "x"} },
		"label value":      func(p *Pod) { p.Labels = map[string]string{"a": "x:y"} },
		"port 0":           func(p *Pod) { p.Ports = []Port{{Port: 0, Protocol: ProtoTCP}} },
		"protocol":         func(p *Pod) { p.Ports = []Port{{Port: 80, Protocol: 1}} },
		"port name":        func(p *Pod) { p.Ports = []Port{{Name: "HTTP", Port: 80, Protocol: ProtoTCP}} },
		"digit port name":  func(p *Pod) { p.Ports = []Port{{Name: "8080", Port: 80, Protocol: ProtoTCP}} },
		"port name twice":  func(p *Pod) { p.Ports = []Port{{Name: "a", Port: 1, Protocol: 6}, {Name: "a", Port: 2, Protocol: 6}} },
		"long port name":   func(p *Pod) { p.Ports = []Port{{Name: strings.Repeat("a", 16), Port: 1, Protocol: 6}} },
		"long label value": func(p *Pod) { p.Labels = map[string]string{"a": strings.Repeat("v", 64)} },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			p := goodPod()
			mutate(&p)
			if err := p.Validate(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want ErrInvalid", err)
			}
			if _, err := p.Encode(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Encode() = %v, want ErrInvalid", err)
			}
		})
	}
	p := goodPod()
	p.Labels, p.Ports, p.UID, p.ServiceAccount = nil, []Port{{Port: 1, Protocol: ProtoSCTP}, {Port: 2, Protocol: ProtoSCTP}}, "", ""
	if err := p.Validate(); err != nil {
		t.Fatalf("minimal pod: %v", err)
	}
}

func TestPodDecode(t *testing.T) {
	tests := map[string]struct{ key, value string }{
		"not JSON":         {"n/a/b", `x`},
		"key mismatch":     {"n/a/b", `{"namespace":"a","name":"c","node":"n"}`},
		"node mismatch":    {"m/a/b", `{"namespace":"a","name":"b","node":"n"}`},
		"short key":        {"a/b", `{"namespace":"a","name":"b","node":""}`},
		"invalid value":    {"n/a/b", `{"namespace":"a","name":"b","node":"n","ports":[{"port":1}]}`},
		"labels not a map": {"n/a/b", `{"namespace":"a","name":"b","node":"n","labels":["x"]}`},
		"port too large":   {"n/a/b", `{"namespace":"a","name":"b","node":"n","ports":[{"port":70000,"protocol":6}]}`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode(tt.key, []byte(tt.value)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode() = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestNamespace(t *testing.T) {
	n := Namespace{Name: "prod", Labels: map[string]string{"team": "a"}}
	b, err := n.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNamespace(n.Key(), b)
	if err != nil || !got.Equal(n) {
		t.Fatalf("DecodeNamespace(Encode) = %+v, %v", got, err)
	}
	bad := map[string]struct{ key, value string }{
		"not JSON":     {"prod", `x`},
		"key mismatch": {"dev", `{"name":"prod"}`},
		"bad name":     {"a.b", `{"name":"a.b"}`},
		"bad label":    {"prod", `{"name":"prod","labels":{"a":"b c"}}`},
	}
	for name, tt := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeNamespace(tt.key, []byte(tt.value)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("DecodeNamespace() = %v, want ErrInvalid", err)
			}
		})
	}
	if _, err := (Namespace{Name: "-x"}).Encode(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Encode of a bad name = %v", err)
	}
}

// FuzzDecode feeds arbitrary keys and values to Decode: no panic; what it
// accepts validates, sits under its own key and round-trips.
func FuzzDecode(f *testing.F) {
	b, _ := goodPod().Encode()
	f.Add("node1/default/web-0", b)
	f.Add("n/a/b", []byte(`{"namespace":"a","name":"b","node":"n"}`))
	f.Add("n/a/b.c", []byte(`{"namespace":"a","name":"b.c","node":"n","ports":[{"name":"dns","port":53,"protocol":17}]}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		p, err := Decode(key, value)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if p.Key() != key {
			t.Fatalf("Decode(%q) returned a pod keyed %q", key, p.Key())
		}
		enc, err := p.Encode()
		if err != nil {
			t.Fatalf("Decode accepted what Encode refuses: %v", err)
		}
		again, err := Decode(key, enc)
		if err != nil || !again.Equal(p) {
			t.Fatalf("round trip: %+v, %v (was %+v)", again, err, p)
		}
	})
}

// FuzzDecodeNamespace is FuzzDecode for namespaces.
func FuzzDecodeNamespace(f *testing.F) {
	f.Add("prod", []byte(`{"name":"prod","labels":{"team":"a"}}`))
	f.Add("a", []byte(`{"name":"a"}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		n, err := DecodeNamespace(key, value)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		enc, err := n.Encode()
		if err != nil {
			t.Fatalf("Decode accepted what Encode refuses: %v", err)
		}
		again, err := DecodeNamespace(n.Key(), enc)
		if err != nil || !again.Equal(n) || n.Key() != key {
			t.Fatalf("round trip: %+v, %v (was %+v)", again, err, n)
		}
	})
}
