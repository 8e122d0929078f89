package cluster_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/identity"
)

func TestRoundTrip(t *testing.T) {
	r := cluster.New("prod-1", 7, time.Date(2025, 3, 4, 5, 6, 7, 890, time.FixedZone("x", 3600)))
	if r.Created != time.Date(2025, 3, 4, 4, 6, 7, 0, time.UTC) || r.Format != cluster.Format {
		t.Fatalf("New = %+v: want the time in UTC to the second, format %d", r, cluster.Format)
	}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := cluster.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("Decode(Encode(r)) = %+v, want %+v", got, r)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct{ name, value, want string }{
		{"not JSON", `{`, "unexpected end"},
		{"bad name", `{"name":"Prod","id":1,"format":1}`, `cluster name "Prod"`},
		{"no name", `{"id":1,"format":1}`, `cluster name ""`},
		{"ID 0", `{"name":"a","format":1}`, "cluster ID 0 is out of range"},
		{"ID 256", `{"name":"a","id":256,"format":1}`, "cluster ID 256 is out of range"},
		{"no format", `{"name":"a","id":1}`, "format 0"},
		{"newer format", `{"name":"a","id":1,"format":2}`, "upgrade"},
		{"ID not a number", `{"name":"a","id":"1","format":1}`, "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cluster.Decode([]byte(tt.value))
			if !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode(%s) = %v, want an error wrapping ErrInvalid that says %q", tt.value, err, tt.want)
			}
		})
	}
	// An ID out of range is identity's error too.
	if _, err := cluster.Decode([]byte(`{"name":"a","id":300,"format":1}`)); !errors.Is(err, identity.ErrInvalid) {
		t.Errorf("ID 300: %v, want identity.ErrInvalid", err)
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	for _, r := range []cluster.Record{
		{Name: "a", ID: 1},                         // no format
		{Name: "a", ID: 0, Format: cluster.Format}, // no ID
		{Name: "-a", ID: 1, Format: cluster.Format},
	} {
		if _, err := r.Encode(); !errors.Is(err, cluster.ErrInvalid) {
			t.Errorf("Encode(%+v) = %v, want ErrInvalid", r, err)
		}
	}
}

func TestCheck(t *testing.T) {
	r := cluster.New("east", 3, time.Now())
	if err := r.Check("east", 3); err != nil {
		t.Fatalf("Check of the same name and ID: %v", err)
	}
	tests := []struct {
		name                      string
		cfgName                   string
		cfgID                     int
		field, stored, configured string
		says                      []string
	}{
		{"ID", "east", 4, cluster.FieldID, "3", "4", []string{"cluster ID differs", "says 3", "configured with 4", "--cluster-id 3", "--etcd-endpoints"}},
		{"name", "west", 3, cluster.FieldName, "east", "west", []string{"cluster name differs", `"east"`, `"west"`, "--cluster-name", "--etcd-endpoints"}},
		{"both: the name first", "west", 4, cluster.FieldName, "east", "west", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Check(tt.cfgName, tt.cfgID)
			var m *cluster.MismatchError
			if !errors.As(err, &m) {
				t.Fatalf("Check(%q, %d) = %v, want a *MismatchError", tt.cfgName, tt.cfgID, err)
			}
			if m.Field != tt.field || m.Stored != tt.stored || m.Configured != tt.configured {
				t.Errorf("mismatch %+v, want field %s, stored %s, configured %s", *m, tt.field, tt.stored, tt.configured)
			}
			for _, s := range tt.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not say %q", err, s)
				}
			}
		})
	}
}

// FuzzDecode feeds arbitrary values of the cluster key to the decoder
// every daemon runs at start: no panic, and what it accepts is valid and
// round-trips.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"name":"default","id":1,"created":"2025-01-02T03:04:05Z","format":1}`))
	f.Add([]byte(`{"name":"a","id":255,"format":1}`))
	f.Add([]byte(`{"name":"a","id":1,"format":2}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		r, err := cluster.Decode(value)
		if err != nil {
			return
		}
		b, err := r.Encode()
		if err != nil {
			t.Fatalf("Decode accepted %s, Encode refuses it: %v", value, err)
		}
		again, err := cluster.Decode(b)
		if err != nil || !again.Created.Equal(r.Created) || again.Name != r.Name || again.ID != r.ID || again.Format != r.Format {
			t.Fatalf("round trip of %s: %+v, %v; want %+v", b, again, err, r)
		}
	})
}
