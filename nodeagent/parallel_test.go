package nodeagent_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/nodeagent"
)

// TestEndpointsInParallel: ADDs and DELs of different pods run at the same
// time (a kubelet starts many pods at once), and repeats of one pod's ADD
// and DEL race with each other. Every pod ends with IPs and an endpoint ID
// of its own, pods with the same labels share their identity, the agent's
// endpoints and etcd's entries agree, and once every pod is deleted
// nothing is held.
func TestEndpointsInParallel(t *testing.T) {
	t.Parallel()
	cfg, cli, keys := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const pods, apps = 48, 6
	spec := func(i int) nodeagent.EndpointSpec {
		return nodeagent.EndpointSpec{Namespace: "shop", Pod: fmt.Sprintf("pod-%d", i), IfIndex: 1,
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%apps)}}
	}
	var (
		mu  sync.Mutex
		eps = make(map[string][]nodeagent.Endpoint)
		wg  sync.WaitGroup
	)
	add := func(i int) {
		ep, err := ta.a.AddEndpoint(ctx, spec(i))
		if err != nil {
			t.Errorf("AddEndpoint(pod-%d): %v", i, err)
			return
		}
		mu.Lock()
		eps[ep.Pod] = append(eps[ep.Pod], ep)
		mu.Unlock()
	}
	for i := range pods {
		wg.Go(func() { add(i) })
		if i%4 == 0 { // a repeated ADD of the same pod, at the same time
			wg.Go(func() { add(i) })
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	ips := make(map[netip.Addr]string)
	ids := make(map[uint32]string)
	identities := make(map[string]uint32)
	for i := range pods {
		s := spec(i)
		got := eps[s.Pod]
		for _, ep := range got[1:] {
			if ep.ID != got[0].ID || ep.IPs[0] != got[0].IPs[0] || ep.Identity != got[0].Identity {
				t.Errorf("repeated ADDs of %s answered %+v and %+v", s.Pod, got[0], ep)
			}
		}
		ep := got[0]
		if other, dup := ips[ep.IPs[0]]; dup {
			t.Errorf("IP %s given to %s and %s", ep.IPs[0], other, s.Pod)
		}
		ips[ep.IPs[0]] = s.Pod
		if other, dup := ids[ep.ID]; dup {
			t.Errorf("endpoint ID %d given to %s and %s", ep.ID, other, s.Pod)
		}
		ids[ep.ID] = s.Pod
		app := s.Labels["app"]
		if id, ok := identities[app]; ok && id != uint32(ep.Identity) {
			t.Errorf("app %s has identities %d and %d", app, id, ep.Identity)
		}
		identities[app] = uint32(ep.Identity)
	}
	if len(identities) != apps {
		t.Errorf("%d identities for %d apps", len(identities), apps)
	}
	if n := len(ta.a.Endpoints()); n != pods {
		t.Errorf("the agent lists %d endpoints, want %d", n, pods)
	}
	kvs, _, err := cli.List(ctx, keys.EndpointsPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != pods {
		t.Errorf("etcd has %d endpoint entries, want %d", len(kvs), pods)
	}

	// DELs in parallel, each pod's racing with a repeat of itself, and
	// (for some) with a late repeat of its ADD, which either finds the pod
	// and answers it or comes after the DEL and adds it again.
	readded := make(map[int]bool)
	var rmu sync.Mutex
	for i := range pods {
		wg.Go(func() {
			if err := ta.a.DeleteEndpoint(ctx, "shop", spec(i).Pod); err != nil {
				t.Errorf("DeleteEndpoint(pod-%d): %v", i, err)
			}
		})
		if i%3 == 0 {
			wg.Go(func() {
				if err := ta.a.DeleteEndpoint(ctx, "shop", spec(i).Pod); err != nil {
					t.Errorf("repeated DeleteEndpoint(pod-%d): %v", i, err)
				}
			})
		}
		if i%8 == 1 {
			wg.Go(func() {
				if _, err := ta.a.AddEndpoint(ctx, spec(i)); err != nil {
					t.Errorf("late AddEndpoint(pod-%d): %v", i, err)
				}
				rmu.Lock()
				readded[i] = true
				rmu.Unlock()
			})
		}
	}
	wg.Wait()
	for i := range readded {
		if err := ta.a.DeleteEndpoint(ctx, "shop", spec(i).Pod); err != nil {
			t.Errorf("DeleteEndpoint(pod-%d): %v", i, err)
		}
	}
	if n := len(ta.a.Endpoints()); n != 0 {
		t.Errorf("the agent lists %d endpoints after deleting them all", n)
	}
	if used := ta.a.Status().IPAM.Used; used != 0 {
		t.Errorf("IPAM used = %d after deleting every pod", used)
	}
	kvs, _, err = cli.List(ctx, keys.EndpointsPrefix())
	if err != nil || len(kvs) != 0 {
		t.Errorf("etcd has %d endpoint entries after deleting every pod (%v)", len(kvs), err)
	}
}
