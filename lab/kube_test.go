package lab

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

// TestKubeDesired checks what the lab writes into a kubernetes cluster's
// API server: namespaces with their labels, pods on their nodes with a
// status only once wired, services with their ClusterIPs, and slices
// with the wired pods their selectors pick.
func TestKubeDesired(t *testing.T) {
	topo, err := ParseTopology([]byte(strings.Replace(base, "podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/16\n    kubernetes: true", 1)))
	if err != nil {
		t.Fatal(err)
	}
	st := &state{Name: "t", Topology: *topo, Pods: []*podState{
		{Pod: Pod{Cluster: "c1", Node: "n1", Namespace: "prod", Name: "a", IP: netip.MustParseAddr("10.200.1.2"), Labels: map[string]string{"app": "a"}, Ports: []PortSpec{{Name: "http", Port: 80, Protocol: "TCP"}}}},
		{Pod: Pod{Cluster: "c1", Node: "n2", Namespace: "prod", Name: "b", Labels: map[string]string{"app": "a"}}}, // not wired yet
	}}
	want, err := st.kubeDesired("c1")
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]string{}
	for _, o := range append(want.apply, want.status...) {
		b, err := json.Marshal(o.obj)
		if err != nil {
			t.Fatal(err)
		}
		objs[o.path] = string(b)
	}
	for path, parts := range map[string][]string{
		"/api/v1/namespaces/prod":                                          {`"labels":{"env":"prod"}`, `"meshplane.io/lab":"t"`},
		"/api/v1/namespaces/prod/pods/a":                                   {`"nodeName":"n1"`, `"labels":{"app":"a"}`, `"containerPort":80`, `"name":"http"`},
		"/api/v1/namespaces/prod/pods/b":                                   {`"nodeName":"n2"`},
		"/api/v1/namespaces/prod/pods/a/status":                            {`"podIP":"10.200.1.2"`, `"phase":"Running"`, `"type":"Ready"`},
		"/api/v1/namespaces/prod/services/web":                             {`"clusterIP":"10.96.0.10"`, `"selector":{"app":"a"}`},
		"/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices/web-lab": {`"kubernetes.io/service-name":"web"`, `"addresses":["10.200.1.2"]`, `"ready":true`},
	} {
		got, ok := objs[path]
		if !ok {
			t.Errorf("no %s", path)
			continue
		}
		for _, p := range parts {
			if !strings.Contains(got, p) {
				t.Errorf("%s: %s lacks %s", path, got, p)
			}
		}
	}
	if _, ok := objs["/api/v1/namespaces/prod/pods/b/status"]; ok {
		t.Error("pod b has a status before it is wired")
	}
	if s := objs["/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices/web-lab"]; strings.Count(s, `"addresses"`) != 1 {
		t.Errorf("slice %s: want only the wired pod a", s)
	}
}
