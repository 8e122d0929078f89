package ipcache

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func TestDecode(t *testing.T) {
	good := Entry{IP: netip.MustParseAddr("10.0.0.1"), Identity: 70000, Node: "n1", Namespace: "a", Pod: "p",
		Ports: []NamedPort{{Name: "http", Port: 80, Protocol: 6}}}
	if got, err := Decode("10.0.0.1", good.Encode()); err != nil || !reflect.DeepEqual(got, good) {
		t.Fatalf("Decode(Encode) = %+v, %v", got, err)
	}
	tests := map[string]struct {
		key   string
		value string
	}{
		"key not an IP":   {"10.0.0", `{"ip":"10.0.0.1","identity":1,"node":"n"}`},
		"key mismatch":    {"10.0.0.2", `{"ip":"10.0.0.1","identity":1,"node":"n"}`},
		"no identity":     {"10.0.0.1", `{"ip":"10.0.0.1","node":"n"}`},
		"nameless port":   {"10.0.0.1", `{"ip":"10.0.0.1","identity":1,"node":"n","ports":[{"port":80,"protocol":6}]}`},
		"bad node":        {"10.0.0.1", `{"ip":"10.0.0.1","identity":1,"node":"a/b"}`},
		"not JSON":        {"10.0.0.1", `x`},
		"identity string": {"10.0.0.1", `{"ip":"10.0.0.1","identity":"x","node":"n"}`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode(tt.key, []byte(tt.value)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode() = %v, want ErrInvalid", err)
			}
		})
	}
}

// FuzzDecode feeds arbitrary keys and values to Decode: no panic, and
// what it accepts round-trips.
func FuzzDecode(f *testing.F) {
	f.Add("10.0.0.1", []byte(`{"ip":"10.0.0.1","identity":70000,"node":"n1"}`))
	f.Add("fd00::1", []byte(`{"ip":"fd00::1","identity":2,"node":"n"}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		e, err := Decode(key, value)
		if err != nil {
			return
		}
		again, err := Decode(key, e.Encode())
		if err != nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip: %+v, %v (was %+v)", again, err, e)
		}
	})
}
