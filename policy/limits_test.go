package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// rulesDoc is a NetworkPolicy with n ingress rules, each with peers pod
// selectors and ports ports.
func rulesDoc(n, peers, ports int) string {
	var b strings.Builder
	b.WriteString("podSelector: {}\n  ingress:\n")
	for i := range n {
		b.WriteString("  - from:\n")
		for j := range peers {
			fmt.Fprintf(&b, "    - podSelector: {matchLabels: {app: a%d-%d}}\n", i, j)
		}
		if ports > 0 {
			b.WriteString("    ports:\n")
			for j := range ports {
				fmt.Fprintf(&b, "    - port: %d\n", 1+j)
			}
		}
	}
	return npDoc(strings.TrimSuffix(b.String(), "\n"))
}

// TestParseLimits holds the bounds on one policy: a 1 MB policy once made
// 232k map entries on one node.
func TestParseLimits(t *testing.T) {
	excepts := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "10.%d.%d.0/24, ", i/256, i%256)
		}
		return "podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [" + strings.TrimSuffix(b.String(), ", ") + "]}}]"
	}
	values := func(n int) string {
		vs := make([]string, n)
		for i := range vs {
			vs[i] = fmt.Sprintf("v%d", i)
		}
		return "podSelector:\n    matchExpressions: [{key: app, operator: In, values: [" + strings.Join(vs, ", ") + "]}]"
	}
	terms := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "k%d: v, ", i)
		}
		return "podSelector:\n    matchLabels: {" + strings.TrimSuffix(b.String(), ", ") + "}"
	}
	// A policy of long label values: small in rules, large in bytes.
	big := func() string {
		var b strings.Builder
		b.WriteString("podSelector: {}\n  ingress:\n")
		for i := range 100 {
			b.WriteString("  - from:\n")
			for j := range 10 {
				b.WriteString("    - podSelector: {matchLabels: {")
				for k := range 4 {
					fmt.Fprintf(&b, "key-%d-%d-%d: %s, ", i, j, k, strings.Repeat("v", 63))
				}
				b.WriteString("app: x}}\n")
			}
		}
		return npDoc(strings.TrimSuffix(b.String(), "\n"))
	}
	ok := []struct {
		name  string
		input string
	}{
		{"rules at the limit", rulesDoc(MaxRules, 1, 1)},
		{"peers at the limit", rulesDoc(1, MaxPeers, 1)},
		{"ports at the limit", rulesDoc(1, 1, MaxPorts)},
		{"expansion at the limit", rulesDoc(1, 128, 128)},
		{"excepts at the limit", npDoc(excepts(MaxExcepts))},
		{"values at the limit", npDoc(values(MaxValues))},
		{"selector terms at the limit", npDoc(terms(MaxSelectorTerms))},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse([]byte(tt.input)); err != nil {
				t.Fatalf("Parse = %v, want it allowed", err)
			}
		})
	}
	bad := []struct {
		name  string
		input string
		want  string
	}{
		{"file too large", npDoc("podSelector: {}") + "# " + strings.Repeat("x", MaxInputBytes) + "\n", "at most 1048576 bytes"},
		{"too many rules", rulesDoc(MaxRules+1, 0, 0), "spec: 1025 rules; at most 1024"},
		{"too many peers", rulesDoc(1, MaxPeers+1, 0), "spec.ingress[0].from: 4097 peers; at most 4096"},
		{"too many ports", rulesDoc(1, 0, MaxPorts+1), "spec.ingress[0].ports: 1025 ports; at most 1024"},
		{"too many excepts", npDoc(excepts(MaxExcepts + 1)), "ipBlock.except: 1025 blocks; at most 1024"},
		{"too many values", npDoc(values(MaxValues + 1)), "matchExpressions[0].values: 1025 values; at most 1024"},
		{"too many selector terms", npDoc(terms(MaxSelectorTerms + 1)), "spec.podSelector: 65 terms; at most 64"},
		{"expansion", rulesDoc(2, 128, 65), "spec: expands to 16640 policy map entries per selected endpoint (peers times ports of each rule); at most 16384"},
		{"port ranges expand", npDoc("podSelector: {}\n  ingress:\n  - from: [" + strings.Repeat("{podSelector: {}}, ", 1099) + "{podSelector: {}}]\n    ports: [{port: 1, endPort: 65535}]"), "expands to 17600"},
		{"policy too large", big(), "bytes as stored; at most 262144"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Parse([]byte(tt.input))
			if err == nil {
				t.Fatalf("Parse succeeded with %d policies", len(ps))
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse = %.400s\nwant ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

// TestDecodeLimits: a value in etcd gets the same bounds, so an agent
// never expands a policy written there by hand past them.
func TestDecodeLimits(t *testing.T) {
	ps, err := Parse([]byte(rulesDoc(MaxRules, 1, 1)))
	if err != nil {
		t.Fatal(err)
	}
	p := ps[0]
	p.Spec.Ingress = append(p.Spec.Ingress, p.Spec.Ingress[0])
	if _, err := p.Encode(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "1025 rules") {
		t.Fatalf("Encode of 1025 rules = %v, want ErrInvalid naming the rules", err)
	}
	data := `{"kind":"NetworkPolicy","name":"x","spec":{"podSelector":{}}}` + strings.Repeat(" ", MaxPolicyBytes)
	if _, err := Decode([]byte(data)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at most 262144") {
		t.Fatalf("Decode of an oversized value = %v, want ErrInvalid naming the limit", err)
	}
}
