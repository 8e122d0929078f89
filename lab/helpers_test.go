package lab

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
)

// freePort returns a loopback port of network that was free a moment ago.
func freePort(t *testing.T, network string) uint16 {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = pc.Close() }()
		return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// waitFile polls for a file, up to 10s.
func waitFile(t *testing.T, path string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("server ended before %s appeared: %v", path, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within 10s", path)
		}
		time.Sleep(10 * time.Millisecond) // polling a file, not coordinating
	}
}

func TestEchoAndProbes(t *testing.T) {
	tcp, udp := freePort(t, "tcp"), freePort(t, "udp")
	ready := filepath.Join(t.TempDir(), "ready")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Echo(ctx, EchoConfig{Name: "c1/prod/web", TCP: []uint16{tcp}, UDP: []uint16{udp}, ReadyFile: ready})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Echo: %v", err)
		}
	})
	waitFile(t, ready, done)
	lo := netip.MustParseAddr("127.0.0.1")

	tests := []struct {
		name    string
		probe   func(context.Context, netip.AddrPort, time.Duration) (string, uint16, error)
		port    uint16
		wantErr string // "" = answered
	}{
		{"tcp", probeTCP, tcp, ""},
		{"udp", probeUDP, udp, ""},
		{"tcp refused", probeTCP, freePort(t, "tcp"), "connection refused"},
		{"udp refused", probeUDP, freePort(t, "udp"), "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, src, err := tt.probe(context.Background(), netip.AddrPortFrom(lo, tt.port), 2*time.Second)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if src == 0 && strings.HasPrefix(tt.name, "tcp") {
					t.Fatal("a failed TCP probe must still know its source port (to find its flow)")
				}
				return
			}
			if err != nil || name != "c1/prod/web" || src == 0 {
				t.Fatalf("probe = %q, port %d, %v; want the echo server's name", name, src, err)
			}
		})
	}
}

// TestServeEtcd checks the path the agents in node namespaces take to
// etcd: a unix socket, proxied to an embedded etcd, used by kvstore with a
// unix:// endpoint.
func TestServeEtcd(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "etcd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeEtcd(ctx, EtcdConfig{Dir: filepath.Join(dir, "data"), Socket: sock}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeEtcd: %v", err)
		}
	})
	waitFile(t, sock, done)
	client, err := kvstore.New(ctx, kvstore.Config{Endpoints: []string{"unix://" + sock}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	if err := client.Put(ctx, "/lab-test/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	kv, ok, err := client.Get(ctx, "/lab-test/k")
	if err != nil || !ok || string(kv.Value) != "v" {
		t.Fatalf("Get = %q, %v, %v", kv.Value, ok, err)
	}
}

func TestOwnedBy(t *testing.T) {
	dir := "/run/meshplane-lab/demo"
	tests := []struct {
		args []string
		want bool
	}{
		{[]string{"mesh-agent", "--state-dir=/run/meshplane-lab/demo/clusters/c1/nodes/n1/state"}, true},
		{[]string{"meshctl", "lab", "echo", "--ready-file=/run/meshplane-lab/demo/x.ready"}, true},
		{[]string{"mesh-agent", "--state-dir=/run/meshplane-lab/demo-x/clusters/c1"}, false}, // another lab
		{[]string{"tail", "-f", "/run/meshplane-lab/demo/clusters/c1/etcd.log"}, false},      // a person's shell
		{[]string{""}, false},
	}
	for _, tt := range tests {
		if got := ownedBy(tt.args, dir); got != tt.want {
			t.Errorf("ownedBy(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}
