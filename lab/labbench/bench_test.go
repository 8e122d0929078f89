package labbench

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/lab"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseCase(t *testing.T) {
	tests := []struct {
		in      string
		want    Case
		wantErr string
	}{
		{"0/1", Case{0, 1}, ""},
		{"10000/10000", Case{10000, 10000}, ""},
		{"10000", Case{}, "RULES/SERVICES"},
		{"1/2/3", Case{}, "RULES/SERVICES"},
		{"a/1", Case{}, "RULES/SERVICES"},
		{"01/1", Case{}, "RULES/SERVICES"}, // not what String writes
		{"0/0", Case{}, "1-30000 services"},
		{"-1/1", Case{}, "0-100000 rules"},
		{"0/30001", Case{}, "1-30000 services"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseCase(tt.in)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCase(%q) = %v, %v; want an ErrConfig saying %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || got.String() != tt.in {
				t.Fatalf("ParseCase(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Enforcers) != 2 || len(c.Routing) != 2 || len(c.setups()) != 3 || len(c.Cases) != len(DefaultCases) || c.Duration != DefaultDuration || c.Workers != DefaultWorkers ||
		c.Rounds != 1 || c.RRCount != DefaultRRCount || c.RRSize != 1 || c.Applies != DefaultApplies || c.IPTablesRestore != "iptables-restore" {
		t.Fatalf("defaults: %+v", c)
	}
	for _, bad := range []Config{
		{Enforcers: []string{"nft"}},
		{Enforcers: []string{"ebpf", "ebpf"}},
		{Routing: []string{"bgp"}},
		{Routing: []string{"tunnel", "tunnel"}},
		{Cases: []Case{{Rules: 1, Services: 0}}},
		{Duration: 2 * time.Minute},
		{Warmup: -time.Second},
		{Workers: 65},
		{Rounds: 21},
		{RRCount: -1},
		{RRSize: 1 << 20},
		{Applies: 1001},
	} {
		if _, err := bad.withDefaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: err %v, want ErrConfig", bad, err)
		}
	}
}

func TestAddresses(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{clusterIP(0).String(), "10.96.0.1"},
		{clusterIP(255).String(), "10.96.1.0"},
		{clusterIP(MaxServices - 1).String(), "10.96.117.48"},
		{ruleCIDR(0).String(), "172.16.0.1/32"},
		{ruleCIDR(MaxRules - 1).String(), "172.17.134.160/32"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %s, want %s", tt.got, tt.want)
		}
	}
	ipt, native, tunnel := labName(setup{EnforcerIPTables, lab.RoutingNative}), labName(setup{EnforcerEBPF, lab.RoutingNative}), labName(setup{EnforcerEBPF, lab.RoutingTunnel})
	if !strings.HasPrefix(ipt, "bench-i-") || !strings.HasPrefix(tunnel, "bench-t-") || len(native) > 16 || native == tunnel {
		t.Errorf("lab names %s, %s, %s", native, tunnel, ipt)
	}
}

// TestTunnelCost: the tunnel rows get their ratios to the native row of
// their case; without a native row, none.
func TestTunnelCost(t *testing.T) {
	rows := []Row{
		{Enforcer: EnforcerEBPF, Routing: lab.RoutingNative, ConnPerS: 1000, RRP50US: 50, RRP99US: 100},
		{Enforcer: EnforcerEBPF, Routing: lab.RoutingTunnel, ConnPerS: 800, RRP50US: 60, RRP99US: 150},
		{Enforcer: EnforcerIPTables, Routing: lab.RoutingNative, ConnPerS: 900, RRP50US: 55, RRP99US: 110},
	}
	tunnelCost(rows)
	if r := rows[1]; r.ConnPerSVsNativeRatio != 0.8 || r.RRP50VsNativeRatio != 1.2 || r.RRP99VsNativeRatio != 1.5 {
		t.Errorf("tunnel row %+v", r)
	}
	if r := rows[2]; r.ConnPerSVsNativeRatio != 0 {
		t.Errorf("iptables row has a ratio: %+v", r)
	}
	alone := rows[1:2]
	alone[0].ConnPerSVsNativeRatio = 0
	tunnelCost(alone)
	if alone[0].ConnPerSVsNativeRatio != 0 {
		t.Errorf("ratio without a native row: %+v", alone[0])
	}
}

// TestTables checks the shape of the iptables rules: the order that makes
// the comparison fair (established first, the never-matching rules before
// the client's allow; the service of the measurement last).
func TestTables(t *testing.T) {
	filter := strings.Split(strings.TrimSpace(string(filterTable(3, "bench/bench/client", "10.244.1.2", "10.244.2.2"))), "\n")
	want := []string{
		"*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
		"-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
		"-A FORWARD -s 172.16.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT",
		"-A FORWARD -s 172.16.0.2/32 -p tcp -m tcp --dport 80 -j ACCEPT",
		"-A FORWARD -s 172.16.0.3/32 -p tcp -m tcp --dport 80 -j ACCEPT",
		`-A FORWARD -s 10.244.1.2/32 -d 10.244.2.2/32 -p tcp -m tcp --dport 80 -m comment --comment "bench/bench/client" -j ACCEPT`,
		"-A FORWARD -d 10.244.2.2/32 -j DROP",
		"COMMIT",
	}
	if strings.Join(filter, "\n") != strings.Join(want, "\n") {
		t.Errorf("filter table:\n%s\nwant:\n%s", strings.Join(filter, "\n"), strings.Join(want, "\n"))
	}
	nat := string(natTable(2, "10.244.2.2"))
	for _, line := range []string{
		":KUBE-SERVICES - [0:0]\n",
		":KUBE-SVC-1 - [0:0]\n:KUBE-SEP-1 - [0:0]\n",
		"-A PREROUTING -j KUBE-SERVICES\n",
		"-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-0\n-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-1\n",
		"-A KUBE-SVC-1 -j KUBE-SEP-1\n-A KUBE-SEP-1 -p tcp -m tcp -j DNAT --to-destination 10.244.2.2:80\n",
	} {
		if !strings.Contains(nat, line) {
			t.Errorf("nat table has no %q:\n%s", line, nat)
		}
	}
	if !strings.HasPrefix(nat, "*nat\n") || !strings.HasSuffix(nat, "COMMIT\n") {
		t.Errorf("nat table:\n%s", nat)
	}
}

func TestStats(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if percentile(d, 50) != 5 || percentile(d, 99) != 10 || percentile(nil, 50) != 0 {
		t.Errorf("percentiles of 1..10: p50 %d, p99 %d", percentile(d, 50), percentile(d, 99))
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median(3,1,2) = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median(4,1,3,2) = %v", m)
	}
	if r := round(1.23456, 2); r != 1.23 {
		t.Errorf("round = %v", r)
	}
}
