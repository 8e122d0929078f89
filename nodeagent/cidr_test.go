package nodeagent_test

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
)

// cidrMapOf reads a node's installed CIDR map.
func cidrMapOf(t *testing.T, node string) map[netip.Prefix]uint32 {
	t.Helper()
	m := pinned[bpf.IPCacheKey, bpf.CIDRValue](t, node, bpf.CIDRMapName)
	out := make(map[netip.Prefix]uint32)
	if err := m.Iterate(func(k bpf.IPCacheKey, v bpf.CIDRValue) bool {
		out[k.Prefix()] = v.Identity
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// cidrMapIs checks that the CIDR map holds exactly the prefixes of want,
// each with the identity the ipcache gives that prefix (world for a /0),
// and returns those identities.
func cidrMapIs(t *testing.T, node string, want ...string) (map[netip.Prefix]uint32, error) {
	got := cidrMapOf(t, node)
	ipc := ipcacheOf(t, node)
	var wantP []netip.Prefix
	for _, s := range want {
		wantP = append(wantP, netip.MustParsePrefix(s))
	}
	if keys := sortPrefixes(slices.Collect(maps.Keys(got))); !slices.Equal(keys, sortPrefixes(wantP)) {
		return got, fmt.Errorf("CIDR map holds %v; want %v", keys, sortPrefixes(wantP))
	}
	for p, id := range got {
		if p.Bits() == 0 {
			if id != uint32(identity.World) {
				return got, fmt.Errorf("%s: identity %d; want world", p, id)
			}
			continue
		}
		v, ok, err := exact(ipc, p)
		if err != nil || !ok || v.Identity != id || id <= 1<<24 {
			return got, fmt.Errorf("%s: CIDR map identity %d, ipcache %+v (found %v, %w); want the same node-local CIDR identity", p, id, v, ok, err)
		}
	}
	return got, nil
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	return slices.SortedFunc(slices.Values(ps), func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
}

// TestAgentCIDRMap checks that the CIDR map follows the policies: every
// prefix an ipBlock names (cidr and excepts) with the CIDR identity the
// ipcache has for it, a /0 cidr with world, nothing else (no pod, no node);
// prefixes leave with the last policy naming them; a restarted agent keeps
// the CIDR identities it had (seeded from the pinned CIDR map), so no map
// is renumbered; and with IPBlockOutsideOnly the map is emptied while the
// ipcache keeps the CIDR identities.
func TestAgentCIDRMap(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)

	const (
		web = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]
`
		client1 = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}, {ipBlock: {cidr: 198.51.100.0/24}}]
`
	)
	putPolicy(t, client, keys, web)
	putPolicy(t, client, keys, client1)
	eventually(t, 10*time.Second, "the CIDR map of both policies", func() error {
		_, err := cidrMapIs(t, cfg.Node, "198.51.100.0/24", "198.51.100.128/25", "0.0.0.0/0", "10.0.0.0/8")
		return err
	})

	// The except goes (198.51.100.0/24 stays: the other policy names it).
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 198.51.100.0/24}}]
`)
	eventually(t, 10*time.Second, "the except gone", func() error {
		_, err := cidrMapIs(t, cfg.Node, "198.51.100.0/24", "0.0.0.0/0", "10.0.0.0/8")
		return err
	})
	// The first prefixes' numbers are taken by those that stay, so a
	// renumbering restart would show.
	if err := client.Delete(context.Background(), keys.Policy("prod", "client")); err != nil {
		t.Fatal(err)
	}
	var before map[netip.Prefix]uint32
	eventually(t, 10*time.Second, "the second policy gone", func() error {
		var err error
		before, err = cidrMapIs(t, cfg.Node, "198.51.100.0/24")
		return err
	})
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 203.0.113.0/24}}]
`)
	eventually(t, 10*time.Second, "a third policy", func() error {
		var err error
		before, err = cidrMapIs(t, cfg.Node, "198.51.100.0/24", "203.0.113.0/24")
		return err
	})

	// Restart: the same numbers, in the CIDR map and the ipcache.
	ta.stop()
	ta = startAgent(t, cfg)
	ta.waitOK(t)
	after, err := cidrMapIs(t, cfg.Node, "198.51.100.0/24", "203.0.113.0/24")
	if err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if !maps.Equal(before, after) {
		t.Fatalf("CIDR identities before the restart %v, after %v; want them kept", before, after)
	}

	// IPBlockOutsideOnly: the CIDR map is emptied; the ipcache keeps the
	// CIDR identities, which still match addresses outside the cluster.
	ta.stop()
	cfg.IPBlockOutsideOnly = true
	ta = startAgent(t, cfg)
	ta.waitOK(t)
	eventually(t, 10*time.Second, "the CIDR map emptied", func() error {
		if got := cidrMapOf(t, cfg.Node); len(got) != 0 {
			return fmt.Errorf("CIDR map holds %v; want nothing", got)
		}
		v, ok, err := exact(ipcacheOf(t, cfg.Node), netip.MustParsePrefix("203.0.113.0/24"))
		if err != nil || !ok || v.Identity <= 1<<24 {
			return fmt.Errorf("ipcache 203.0.113.0/24: %+v, %v, %w; want a CIDR identity", v, ok, err)
		}
		return nil
	})

	// Back to the default: the map is filled again, and emptied when the
	// policies go.
	ta.stop()
	cfg.IPBlockOutsideOnly = false
	ta = startAgent(t, cfg)
	ta.waitOK(t)
	eventually(t, 10*time.Second, "the CIDR map filled again", func() error {
		_, err := cidrMapIs(t, cfg.Node, "198.51.100.0/24", "203.0.113.0/24")
		return err
	})
	for _, name := range []string{"web", "db"} {
		if err := client.Delete(context.Background(), keys.Policy("prod", name)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "the CIDR map empty without policies", func() error {
		_, err := cidrMapIs(t, cfg.Node)
		return err
	})
}

// TestAgentCIDRMapFull names more ipBlock prefixes than the CIDR map
// holds: the map stays empty rather than holding the prefixes that
// happened to fit (a missing except would widen its block), the agent
// says so naming the flag, and the map is filled once the policies fit.
func TestAgentCIDRMapFull(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	cfg.BPF.CIDRMax = 2
	ta := startAgent(t, cfg)
	ta.waitOK(t)

	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}, {ipBlock: {cidr: 203.0.113.0/24}}]
`)
	eventually(t, 10*time.Second, "the overflow reported", func() error {
		st := ta.a.Status()
		reasons := fmt.Sprint(st.Reasons)
		if st.State != "degraded" || !strings.Contains(reasons, "3 prefixes") || !strings.Contains(reasons, "--bpf-cidr-max") {
			return fmt.Errorf("state %s, reasons %v", st.State, st.Reasons)
		}
		return nil
	})
	if got := cidrMapOf(t, cfg.Node); len(got) != 0 {
		t.Fatalf("CIDR map over its capacity holds %v; want nothing", got)
	}

	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]
`)
	eventually(t, 10*time.Second, "the CIDR map filled once it fits", func() error {
		if _, err := cidrMapIs(t, cfg.Node, "198.51.100.0/24", "198.51.100.128/25"); err != nil {
			return err
		}
		if st := ta.a.Status(); st.State != "ok" {
			return fmt.Errorf("state %s, reasons %v", st.State, st.Reasons)
		}
		return nil
	})
}
