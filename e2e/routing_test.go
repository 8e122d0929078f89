package e2e

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/lab"
)

// routeProtocol is the agents' route protocol (nodeagent.RouteProtocol).
const routeProtocol = 109

// startRoutingLab builds testdata/routing.yaml in mode.
func startRoutingLab(t *testing.T, mode string) *lab.Lab {
	t.Helper()
	requireRoot(t)
	data, err := os.ReadFile("testdata/routing.yaml")
	if err != nil {
		t.Fatal(err)
	}
	name := uniqueName(t)
	data = bytes.Replace(data, []byte("name: NAME"), []byte("name: "+name), 1)
	data = bytes.Replace(data, []byte("routing: MODE"), []byte("routing: "+mode), 1)
	topo, err := lab.ParseTopology(data)
	if err != nil {
		t.Fatal(err)
	}
	meshctl, agent := binaries()
	opts := lab.Options{Meshctl: meshctl, Agent: agent}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, topo, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := lab.Down(ctx, name, opts); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// agentRoutes returns the routes of the agents' protocol in node's
// namespace, as "dst via gw".
func agentRoutes(t *testing.T, l *lab.Lab, node string) []string {
	t.Helper()
	n, err := l.Node("c1", node)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromPath(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.Dst.String()+" via "+r.Gw.String())
	}
	slices.Sort(out)
	return out
}

// routeTo is node other's route as agentRoutes shows it.
func routeTo(t *testing.T, l *lab.Lab, other string) string {
	t.Helper()
	n, err := l.Node("c1", other)
	if err != nil {
		t.Fatal(err)
	}
	return n.PodCIDR.String() + " via " + n.IP.String()
}

// waitRoutes waits until node's agent routes are want.
func waitRoutes(t *testing.T, l *lab.Lab, node string, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := agentRoutes(t, l, node)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's routes %q, want %q", node, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func probeOnce(t *testing.T, l *lab.Lab, from, to string, timeout time.Duration) lab.ProbeResult {
	t.Helper()
	res, err := l.Probe(context.Background(), lab.ProbeSpec{From: from, To: to, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func routingStatus(t *testing.T, l *lab.Lab, node string) *api.RoutingStatus {
	t.Helper()
	n, err := l.Node("c1", node)
	if err != nil {
		t.Fatal(err)
	}
	client, closeFn := agentClient(t, n.AgentSocket)
	defer closeFn()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := client.Status(ctx, &api.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st.Routing
}

// TestRoutingAcrossSubnets runs pod-to-pod traffic in both routing
// modes, between nodes on one L2 segment and across the lab's router: the
// agents program the routes (the lab adds none), native routing reaches
// only the node on the same segment and says why it cannot reach the
// other, the tunnel reaches both. A dead node's routes leave and come
// back with it.
func TestRoutingAcrossSubnets(t *testing.T) {
	for _, mode := range []string{lab.RoutingNative, lab.RoutingTunnel} {
		t.Run(mode, func(t *testing.T) {
			l := startRoutingLab(t, mode)
			// a (n1) -> c (n3): the same segment.
			if res := probeOnce(t, l, "prod/a", "prod/c", 5*time.Second); !res.Allowed {
				t.Errorf("a -> c on the same segment: %+v; want it through", res)
			}
			// a (n1) -> b (n2): across the router.
			res := probeOnce(t, l, "prod/a", "prod/b", 5*time.Second)
			st := routingStatus(t, l, "n1")
			switch mode {
			case lab.RoutingTunnel:
				if !res.Allowed || res.Answered != "c1/prod/b" {
					t.Errorf("tunnel: a -> b across the router: %+v; want it through", res)
				}
				waitRoutes(t, l, "n1", routeTo(t, l, "n2"), routeTo(t, l, "n3"))
				if st.TunnelDevice != "mesh_vxlan" || st.TunnelPort != 8472 || st.PodMtu != st.UnderlayMtu-50 || st.UnderlayMtu == 0 {
					t.Errorf("tunnel status %+v", st)
				}
			case lab.RoutingNative:
				if res.Allowed {
					t.Errorf("native: a -> b across the router got through (%+v): the lab must not route pod CIDRs", res)
				}
				waitRoutes(t, l, "n1", routeTo(t, l, "n3"))
				if len(st.Unreachable) != 1 || !strings.Contains(st.Unreachable[0], "node n2") || st.PodMtu != st.UnderlayMtu {
					t.Errorf("native status %+v; want n2 unreachable and the full MTU", st)
				}
			}
			if st.Mode != mode {
				t.Errorf("status says mode %q, want %q", st.Mode, mode)
			}

			// n3 dies: n1 takes its route out; it comes back with n3.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			alive := agentRoutes(t, l, "n1")
			if err := l.KillAgent(ctx, "c1", "n3"); err != nil {
				t.Fatal(err)
			}
			waitHealth(t, l, "n1", "n3", "dead")
			waitRoutes(t, l, "n1", slices.DeleteFunc(slices.Clone(alive), func(r string) bool { return r == routeTo(t, l, "n3") })...)
			if err := l.StartAgent(ctx, "c1", "n3"); err != nil {
				t.Fatal(err)
			}
			waitHealth(t, l, "n1", "n3", "alive")
			waitRoutes(t, l, "n1", alive...)
			if res := probeOnce(t, l, "prod/a", "prod/c", 5*time.Second); !res.Allowed {
				t.Errorf("a -> c after n3 came back: %+v", res)
			}
		})
	}
}
