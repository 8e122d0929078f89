package nodeagent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/nodeagent"
)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func sortStrings(s []string) []string { return slices.Sorted(slices.Values(s)) }

func identityOf(id uint32) identity.ID { return identity.ID(id) }

// addPods adds pods ns/pod-<from>...ns/pod-<to-1> and returns their IPs by
// owner.
func addPods(t *testing.T, ta *testAgent, from, to int) map[string]netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := make(map[string]netip.Addr)
	for i := from; i < to; i++ {
		// ifindex 1 is lo, which always exists; with datapath "none"
		// nothing is attached to it.
		spec := nodeagent.EndpointSpec{Namespace: "shop", Pod: fmt.Sprintf("pod-%d", i), IfIndex: 1, Labels: map[string]string{"app": "web"}}
		ep, err := ta.a.AddEndpoint(ctx, spec)
		if err != nil {
			t.Fatalf("AddEndpoint(%s/%s): %v", spec.Namespace, spec.Pod, err)
		}
		out[spec.Namespace+"/"+spec.Pod] = ep.IPs[0]
	}
	return out
}
