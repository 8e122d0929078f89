package labbench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshplane/meshplane/lab"
)

// restoreTimeout bounds one iptables-restore.
const restoreTimeout = 2 * time.Minute

// iptablesLab is the lab whose agents run no datapath (--datapath=none):
// iptables rules in the node namespaces enforce the policy and translate
// the services, as a Calico-style policy chain and kube-proxy would.
type iptablesLab struct {
	*bench
	restore string
	// rules and services are what the tables hold; -1 before the first
	// apply.
	rules, services int
}

func newIPTablesLab(b *bench, restore string) *iptablesLab {
	return &iptablesLab{bench: b, restore: restore, rules: -1, services: -1}
}

func (t *iptablesLab) name() string { return EnforcerIPTables }
func (t *iptablesLab) base() *bench { return t.bench }
func (t *iptablesLab) close() error { return nil }

// apply replaces the server node's filter table when the rules change,
// and the client node's nat table when the services change. When
// iptables-restore returns, the rules are in force.
func (t *iptablesLab) apply(ctx context.Context, c Case) error {
	if c.Rules != t.rules {
		server, err := t.l.Node(cluster, t.server.Node)
		if err != nil {
			return err
		}
		if err := t.run(ctx, server, filterTable(c.Rules, t.client.Ref(), t.client.IP.String(), t.server.IP.String())); err != nil {
			return err
		}
		t.rules = c.Rules
	}
	if c.Services != t.services {
		client, err := t.l.Node(cluster, t.client.Node)
		if err != nil {
			return err
		}
		if err := t.run(ctx, client, natTable(c.Services, t.server.IP.String())); err != nil {
			return err
		}
		t.services = c.Services
	}
	return nil
}

// run feeds rules to iptables-restore inside a node's namespace. `ip
// netns exec` remounts /sys, which iptables does not mind.
func (t *iptablesLab) run(ctx context.Context, n lab.Node, rules []byte) error {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", filepath.Base(n.Netns), t.restore)
	cmd.Stdin = bytes.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("node %s: %s: %w: %s", n.Name, t.restore, err, bytes.TrimSpace(out))
	}
	return nil
}

// filterTable is the server node's filter table: established traffic
// first, then the never-matching rules, the client's allow and a drop of
// the rest to the server.
func filterTable(rules int, clientRef, client, server string) []byte {
	var b bytes.Buffer
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	b.WriteString("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
	for i := range rules {
		fmt.Fprintf(&b, "-A FORWARD -s %s -p tcp -m tcp --dport %d -j ACCEPT\n", ruleCIDR(i), echoPort)
	}
	fmt.Fprintf(&b, "-A FORWARD -s %s/32 -d %s/32 -p tcp -m tcp --dport %d -m comment --comment %q -j ACCEPT\n", client, server, echoPort, clientRef)
	fmt.Fprintf(&b, "-A FORWARD -d %s/32 -j DROP\n", server)
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// natTable is the client node's nat table in kube-proxy's shape, with
// one service chain and one endpoint chain per service.
func natTable(services int, server string) []byte {
	var b bytes.Buffer
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n")
	for i := range services {
		fmt.Fprintf(&b, ":KUBE-SVC-%d - [0:0]\n:KUBE-SEP-%d - [0:0]\n", i, i)
	}
	b.WriteString("-A PREROUTING -j KUBE-SERVICES\n")
	for i := range services {
		fmt.Fprintf(&b, "-A KUBE-SERVICES -d %s/32 -p tcp -m tcp --dport %d -j KUBE-SVC-%d\n", clusterIP(i), echoPort, i)
	}
	for i := range services {
		fmt.Fprintf(&b, "-A KUBE-SVC-%d -j KUBE-SEP-%d\n", i, i)
		fmt.Fprintf(&b, "-A KUBE-SEP-%d -p tcp -m tcp -j DNAT --to-destination %s:%d\n", i, server, echoPort)
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// iptablesVersion checks that restore runs and returns its version line,
// which names the backend ("(nf_tables)" or "(legacy)").
func iptablesVersion(ctx context.Context, restore string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, restore, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w (%s): the iptables enforcer needs iptables (apt-get install iptables), or leave it out", restore, err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out)), nil
}
