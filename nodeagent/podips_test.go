package nodeagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
	"github.com/meshplane/meshplane/nodeagent"
)

// journalPath is where an agent keeps its pod IP journal.
func journalPath(cfg nodeagent.Config) string {
	return filepath.Join(cfg.StateDir, "ipam", "podip.journal")
}

// checkDistinct fails when two owners have one IP.
func checkDistinct(t *testing.T, sets ...map[string]netip.Addr) {
	t.Helper()
	byIP := make(map[netip.Addr]string)
	for _, s := range sets {
		for owner, ip := range s {
			if prev, ok := byIP[ip]; ok && prev != owner {
				t.Errorf("%s is given to %s and to %s", ip, prev, owner)
			}
			byIP[ip] = owner
		}
	}
}

// checkEtcdOwners checks that etcd's endpoints/<ip> of every pod names it.
func checkEtcdOwners(t *testing.T, c *kvstore.Client, keys kvstore.Keys, node string, pods map[string]netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for owner, ip := range pods {
		kv, ok, err := c.Get(ctx, keys.Endpoint(ipcache.KeyOf(ip)))
		if err != nil || !ok {
			t.Errorf("endpoints/%s of %s: found %v, err %v", ip, owner, ok, err)
			continue
		}
		e, err := ipcache.Decode(ipcache.KeyOf(ip), kv.Value)
		if err != nil {
			t.Errorf("endpoints/%s: %v", ip, err)
			continue
		}
		if got := e.Namespace + "/" + e.Pod; got != owner || e.Node != node {
			t.Errorf("endpoints/%s names %s on %s, want %s on %s", ip, got, e.Node, owner, node)
		}
	}
}

// tearLastRecord cuts the journal's last record in half, as a power loss
// does to a record younger than the last group commit.
func tearLastRecord(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	last := bytes.LastIndexByte(b[:len(b)-1], '\n') + 1
	if err := os.Truncate(path, int64(last+(len(b)-last)/2)); err != nil {
		t.Fatal(err)
	}
}

// TestAgentPodIPsSurviveTheJournal restarts an agent with five pods after
// each of the two faults that once made it hand a restored pod's IP to a
// new pod: the journal's last record torn (a power loss: the state files
// are fsynced at once, the journal every 100ms), and the journal moved
// away as the corrupt-journal error advises. Every restored pod keeps its
// IP, IPAM counts it, and a new pod gets a fresh IP without overwriting
// anyone's etcd entry.
func TestAgentPodIPsSurviveTheJournal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault func(t *testing.T, journal string)
	}{
		{"torn last record", func(t *testing.T, journal string) { tearLastRecord(t, journal) }},
		{"journal moved away", func(t *testing.T, journal string) {
			// Exactly what CorruptJournalError says to do.
			corrupt := fmt.Sprintf("%s.corrupt-%s", journal, time.Now().UTC().Format("20060102T150405Z"))
			if err := os.Rename(journal, corrupt); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, client, keys := mapsOnly(t)
			ta := startAgent(t, cfg)
			ta.waitOK(t)
			pods := addPods(t, ta, 0, 5)
			ta.stop()

			tc.fault(t, journalPath(cfg))

			ta = startAgent(t, cfg)
			ta.waitOK(t)
			if used := ta.a.Status().IPAM.Used; used != 5 {
				t.Errorf("IPAM used = %d after restoring 5 pods, want 5", used)
			}
			fresh := addPods(t, ta, 5, 8)
			checkDistinct(t, pods, fresh)
			checkEtcdOwners(t, client, keys, cfg.Node, pods)
			checkEtcdOwners(t, client, keys, cfg.Node, fresh)
			if used := ta.a.Status().IPAM.Used; used != 8 {
				t.Errorf("IPAM used = %d with 8 pods, want 8", used)
			}
		})
	}
}

// smallPool gives a test cluster a pool of /28 node CIDRs (13 pod IPs
// each), so that a test can hand out every IP of one.
func smallPool(t *testing.T, c *kvstore.Client, cluster string) {
	t.Helper()
	pools, err := nodecidr.NewPools(c, cluster)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool := ipam.Pool{Name: "small", IPv4: []netip.Prefix{netip.MustParsePrefix("10.230.0.0/16")}, IPv4MaskSize: 28}
	if err := pools.Add(ctx, pool); err != nil {
		t.Fatal(err)
	}
}

// setStateFileIPs rewrites the IPs in a stopped agent's state file of a
// pod, as a bug or a bad restore might have left them.
func setStateFileIPs(t *testing.T, cfg nodeagent.Config, pod string, ips ...netip.Addr) {
	t.Helper()
	path := filepath.Join(cfg.StateDir, "endpoints", "shop_"+pod+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ep map[string]any
	if err := json.Unmarshal(b, &ep); err != nil {
		t.Fatal(err)
	}
	ep["ips"] = ips
	if err := os.WriteFile(path, mustJSON(ep), 0o600); err != nil {
		t.Fatal(err)
	}
}

// forgetPod removes a stopped agent's state file and etcd entry of a pod:
// only the journal still knows it.
func forgetPod(t *testing.T, c *kvstore.Client, keys kvstore.Keys, cfg nodeagent.Config, pod string, ip netip.Addr) {
	t.Helper()
	if err := os.Remove(filepath.Join(cfg.StateDir, "endpoints", "shop_"+pod+".json")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Delete(ctx, keys.Endpoint(ipcache.KeyOf(ip))); err != nil {
		t.Fatal(err)
	}
}

// fillCIDR adds pods until one gets an IP outside cidr (the agent claimed
// another CIDR): by then every free IP of cidr was handed out. It returns
// the IPs given in cidr.
func fillCIDR(t *testing.T, ta *testAgent, cidr netip.Prefix, from int) map[string]netip.Addr {
	t.Helper()
	out := make(map[string]netip.Addr)
	for i := from; ; i++ {
		got := addPods(t, ta, i, i+1)
		for owner, ip := range got {
			if !cidr.Contains(ip) {
				return out
			}
			out[owner] = ip
		}
		if i > from+int(1<<(32-cidr.Bits())) {
			t.Fatalf("%d pods in %s: the agent never claimed another CIDR", i-from, cidr)
		}
	}
}

func conflictIPs(cs []nodeagent.IPConflict) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.String())
	}
	return out
}

// TestAgentPodIPConflicts restarts an agent whose records disagree: two
// state files give one IP to two pods; a state file gives a pod an IP
// while the journal gives it another; a journal-only pod holds an IP a
// state file gives to someone else; etcd holds entries of this node for a
// pod it has no state file of and for no pod at all; the journal holds an
// IP no record references. The conflicts are reported (status, metrics)
// and no IP any record claims is handed out, before or after the pods
// in conflict are deleted one by one.
func TestAgentPodIPConflicts(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(t)
	smallPool(t, client, cluster)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone
	cfg.MetricsAddr = freeAddr(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	pods := addPods(t, ta, 0, 7)
	cidr := ta.a.Status().IPAM.PodCIDRs[0]
	ta.stop()
	ip := func(pod int) netip.Addr { return pods[fmt.Sprintf("shop/pod-%d", pod)] }
	at := func(off int) netip.Addr {
		a := cidr.Addr()
		for range off {
			a = a.Next()
		}
		return a
	}
	if ip(0) != at(2) || ip(6) != at(8) {
		t.Fatalf("pods got %v, want .2 to .8 of %s", pods, cidr)
	}

	setStateFileIPs(t, cfg, "pod-1", ip(0))         // pod-0 and pod-1 own one IP
	setStateFileIPs(t, cfg, "pod-2", at(11))        // the journal gives pod-2 another
	forgetPod(t, client, keys, cfg, "pod-4", ip(4)) // unreferenced
	forgetPod(t, client, keys, cfg, "pod-5", ip(5))
	setStateFileIPs(t, cfg, "pod-3", ip(5))                                                                                   // held by pod-5, which only the journal knows
	putEndpoint(t, client, keys, ipcache.Entry{IP: at(8), Identity: 70000, Node: cfg.Node, Namespace: "shop", Pod: "ghost2"}) // pod-6's
	putEndpoint(t, client, keys, ipcache.Entry{IP: at(9), Identity: 70000, Node: cfg.Node, Namespace: "shop", Pod: "ghost"})
	putEndpoint(t, client, keys, ipcache.Entry{IP: at(10), Identity: 70000, Node: cfg.Node})
	putEndpoint(t, client, keys, ipcache.Entry{IP: at(12), Identity: 70000, Node: "elsewhere", Namespace: "shop", Pod: "other"})
	// Held: .2 (pod-0, pod-1), .3 (pod-1 in etcd and the journal), .4
	// (pod-2), .5 (pod-3 in etcd), .6 (pod-4, unreferenced), .7 (pod-5,
	// pod-3), .8 (pod-6, ghost2), .9 (ghost), .10 (no pod), .11 (pod-2's
	// state file).
	held := []netip.Addr{at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10), at(11)}

	ta = startAgent(t, cfg)
	var st nodeagent.Status
	eventually(t, 30*time.Second, "agent degraded by the conflicts", func() error {
		st = ta.a.Status()
		if st.State != "degraded" || len(st.IPAM.Conflicts) != 4 {
			return fmt.Errorf("state %s, reasons %v, conflicts %v", st.State, st.Reasons, st.IPAM.Conflicts)
		}
		return nil
	})
	reasons := strings.Join(st.Reasons, "\n")
	for _, want := range []string{
		fmt.Sprintf("pod IP %s is claimed by shop/pod-0 (journal, state file %s, etcd %s) and shop/pod-1 (state file %s)",
			at(2), filepath.Join(cfg.StateDir, "endpoints", "shop_pod-0.json"), keys.Endpoint(at(2).String()),
			filepath.Join(cfg.StateDir, "endpoints", "shop_pod-1.json")),
		fmt.Sprintf("pod IP %s is claimed by shop/pod-3 (state file %s) and shop/pod-5 (journal)",
			at(7), filepath.Join(cfg.StateDir, "endpoints", "shop_pod-3.json")),
		fmt.Sprintf("pod IP %s is claimed by shop/pod-2 (journal gives it %s, state file", at(11), at(4)),
		fmt.Sprintf("pod IP %s is claimed by shop/ghost2 (etcd %s) and shop/pod-6 (journal, state file", at(8), keys.Endpoint(at(8).String())),
		"it stays allocated and no new pod gets it",
	} {
		if !strings.Contains(reasons, want) {
			t.Errorf("status reasons lack %q:\n%s", want, reasons)
		}
	}
	if st.IPAM.Unreferenced != 1 || st.IPAM.Used != len(held) {
		t.Errorf("IPAM %d used, %d unreferenced; want %d, 1", st.IPAM.Used, st.IPAM.Unreferenced, len(held))
	}
	resp, err := http.Get("http://" + cfg.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"meshplane_ipam_pod_ip_conflicts 4", "meshplane_ipam_unreferenced_pod_ips 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Every IP nobody claims goes to new pods, and nothing else.
	isHeld := func(a netip.Addr) bool { return slices.Contains(held, a) }
	fresh := fillCIDR(t, ta, cidr, 100)
	for owner, a := range fresh {
		if isHeld(a) {
			t.Errorf("new pod %s got %s, which a record claims", owner, a)
		}
	}
	if len(fresh) != 13-len(held) {
		t.Errorf("%d new pods in %s, want %d: %v", len(fresh), cidr, 13-len(held), fresh)
	}
	// pod-5's CNI ADD, retried: it gets a fresh IP, not the one pod-3's
	// state file gives pod-3.
	if got := addPods(t, ta, 5, 6)["shop/pod-5"]; got == ip(5) {
		t.Errorf("pod-5 added again got %s, which pod-3 claims", got)
	}
	// pod-4's retried ADD gets its IP back: nobody else claims it.
	if got := addPods(t, ta, 4, 5)["shop/pod-4"]; got != ip(4) {
		t.Errorf("pod-4 added again got %s, want %s", got, ip(4))
	}

	// Deleting pods in conflict keeps their IPs held while another pod
	// claims them, and clears each conflict when its last pod is gone.
	used := func() int { return ta.a.Status().IPAM.Used }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	del := func(pod string) {
		t.Helper()
		if err := ta.a.DeleteEndpoint(ctx, "shop", pod); err != nil {
			t.Fatal(err)
		}
	}
	before := used()
	// ghost2 goes: pod-6 is left with its IP, and no conflict.
	del("ghost2")
	if n := len(ta.a.Status().IPAM.Conflicts); n != 3 || used() != before {
		t.Errorf("after deleting ghost2: %d conflicts, %d IPs used; want 3, %d", n, used(), before)
	}
	del("pod-0") // held .2, which pod-1 still claims
	if got := used(); got != before {
		t.Errorf("deleting pod-0 changed IPs used from %d to %d: %s went back to the pool while pod-1 claims it", before, got, at(2))
	}
	if cs := conflictIPs(ta.a.Status().IPAM.Conflicts); !strings.Contains(strings.Join(cs, "\n"),
		fmt.Sprintf("pod IP %s is claimed by shop/pod-1 (journal gives it %s, state file", at(2), at(3))) {
		t.Errorf("after deleting pod-0, conflicts %v: want %s still in conflict, pod-1 holding %s too", cs, at(2), at(3))
	}
	del("pod-1") // .2 is free now; so is pod-1's .3
	del("pod-2") // .11 and .4
	del("pod-3") // .7 and .5
	st = ta.a.Status()
	if len(st.IPAM.Conflicts) != 0 {
		t.Errorf("conflicts left after deleting their pods: %v", conflictIPs(st.IPAM.Conflicts))
	}
	if got, want := used(), before-6; got != want {
		t.Errorf("%d IPs used after deleting the pods in conflict, want %d", got, want)
	}
	ta.waitOK(t)
	// A DEL of a pod only etcd knows releases its IP and its entry.
	del("ghost")
	if got, want := used(), before-7; got != want {
		t.Errorf("%d IPs used after deleting the pod only etcd knew, want %d", got, want)
	}
	kvs, _, err := client.List(ctx, keys.EndpointsPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		e, err := ipcache.Decode(strings.TrimPrefix(kv.Key, keys.EndpointsPrefix()), kv.Value)
		if err == nil && e.Node == cfg.Node && slices.Contains([]string{"pod-0", "pod-1", "pod-2", "pod-3", "ghost", "ghost2"}, e.Pod) {
			t.Errorf("etcd entry %s of deleted pod %s/%s is left", kv.Key, e.Namespace, e.Pod)
		}
	}

	// A restart finds nothing left to report.
	ta.stop()
	ta = startAgent(t, cfg)
	ta.waitOK(t)
	if st := ta.a.Status(); len(st.IPAM.Conflicts) != 0 || st.IPAM.Unreferenced != 0 {
		t.Errorf("after a restart: conflicts %v, %d unreferenced", conflictIPs(st.IPAM.Conflicts), st.IPAM.Unreferenced)
	}
}

// TestAgentDeleteRightAfterRestart: a CNI DEL that reaches a restarted
// agent before it has re-taken the pod's identity reference succeeds, and
// neither it nor the restore that follows leaves a reference behind (the
// DEL used to fail with "this node holds no reference to it", and a
// restore after it re-took a reference nobody would release).
func TestAgentDeleteRightAfterRestart(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	pods := addPods(t, ta, 0, 8)
	ta.stop()

	ta = startAgent(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for owner := range pods {
		ns, pod, _ := strings.Cut(owner, "/")
		for {
			err := ta.a.DeleteEndpoint(ctx, ns, pod)
			if err == nil {
				break
			}
			if !errors.Is(err, nodeagent.ErrNotReady) || ctx.Err() != nil {
				t.Fatalf("DeleteEndpoint(%s) right after the restart: %v", owner, err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	ta.waitOK(t)
	eventually(t, 10*time.Second, "no identity reference of the node is left", func() error {
		kvs, _, err := client.List(ctx, keys.IdentityRefsPrefix())
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			if strings.HasSuffix(kv.Key, "/"+cfg.Node) {
				return fmt.Errorf("%s is left", kv.Key)
			}
		}
		return nil
	})
}
