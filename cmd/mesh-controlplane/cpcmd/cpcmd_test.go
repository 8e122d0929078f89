package cpcmd

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/controlplane"
)

// TestLoadPrecedence: a flag beats the environment, which beats the file.
func TestLoadPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cp.yaml")
	if err := os.WriteFile(file, []byte(`
cluster-name: from-file
cluster-id: 4
name: from-file
etcd-endpoints: [http://127.0.0.1:1, http://127.0.0.1:2]
resync-interval: 1m
lease-ttl: 7s
kubeconfig: /from/file
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MESHPLANE_CLUSTER_NAME", "from-env")
	t.Setenv("MESHPLANE_LEASE_TTL", "9s")
	o, err := Load([]string{"--config", file, "--lease-ttl", "3s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cp := o.ControlPlane
	if cp.Cluster != "from-env" || cp.ClusterID != 4 || cp.Name != "from-file" || cp.LeaseTTL != 3*time.Second || cp.ResyncInterval != time.Minute {
		t.Errorf("options %+v", cp)
	}
	if len(o.Etcd.Endpoints) != 2 || o.Kubeconfig != "/from/file" {
		t.Errorf("etcd %v kubeconfig %q", o.Etcd.Endpoints, o.Kubeconfig)
	}
}

// TestLoadErrors: bad input says what is wrong.
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no etcd", nil, "--etcd-endpoints"},
		{"bad cluster", []string{"--etcd-endpoints", "http://x:1", "--cluster-name", "Bad_Name"}, "cluster name"},
		{"cluster ID 0", []string{"--etcd-endpoints", "http://x:1", "--cluster-id", "0"}, "--cluster-id: invalid identity: cluster ID 0 is out of range"},
		{"cluster ID 256", []string{"--etcd-endpoints", "http://x:1", "--cluster-id", "256"}, "--cluster-id"},
		{"short lease", []string{"--etcd-endpoints", "http://x:1", "--lease-ttl", "100ms"}, "--lease-ttl"},
		{"bad level", []string{"--etcd-endpoints", "http://x:1", "--log-level", "loud"}, "--log-level"},
		{"argument", []string{"extra"}, "only flags"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(tt.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load(%v) = %v, want an error naming %q", tt.args, err, tt.want)
			}
		})
	}
	if _, err := Load(nil, io.Discard); !errors.Is(err, controlplane.ErrConfig) {
		t.Errorf("Load without etcd = %v, want controlplane.ErrConfig", err)
	}
}
