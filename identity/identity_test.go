package identity

import (
	"errors"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		cluster ClusterID
		local   int
		want    ID
		wantErr bool
	}{
		{1, 256, 1<<16 | 256, false},
		{255, 65535, 0xffffff, false},
		{0, 256, 0, true},
		{1, 255, 0, true},
		{1, 65536, 0, true},
	}
	for _, tt := range tests {
		got, err := New(tt.cluster, tt.local)
		if tt.wantErr {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("New(%d, %d) error = %v, want ErrInvalid", tt.cluster, tt.local, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("New(%d, %d) = %d, %v; want %d", tt.cluster, tt.local, got, err, tt.want)
		}
		if got.Cluster() != tt.cluster || got.Local() != tt.local {
			t.Errorf("round trip of %d: cluster %d local %d", got, got.Cluster(), got.Local())
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    ID
		wantErr bool
	}{
		{"1", Host, false},
		{"host", Host, false},
		{"kube-apiserver", KubeAPIServer, false},
		{"65792", 1<<16 | 256, false},
		{"0", 0, true},
		{"300", 0, true},      // no cluster bits
		{"65537", 0, true},    // cluster 1, local 1
		{"16777216", 0, true}, // 25 bits
		{"-1", 0, true},
		{"web", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Parse(%q) error = %v, want ErrInvalid", tt.in, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestReserved(t *testing.T) {
	ids := Reserved()
	if len(ids) != 7 {
		t.Fatalf("Reserved() = %v, want 7 identities", ids)
	}
	for _, id := range ids {
		name, ok := id.ReservedName()
		if !ok || !id.IsReserved() {
			t.Fatalf("%d: not reserved", id)
		}
		if back, _ := ReservedByName(name); back != id {
			t.Fatalf("ReservedByName(%q) = %d, want %d", name, back, id)
		}
	}
}

func TestValidateClusterID(t *testing.T) {
	for _, c := range []int{0, 256, -1} {
		if err := ValidateClusterID(c); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateClusterID(%d) = %v, want ErrInvalid", c, err)
		}
	}
	if err := ValidateClusterID(7); err != nil {
		t.Errorf("ValidateClusterID(7) = %v", err)
	}
}
