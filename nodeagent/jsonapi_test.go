package nodeagent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/api/agentjson"
	"github.com/meshplane/meshplane/nodeagent"
)

// TestAgentJSONMessagesMatchProto: every field of agentjson's message
// types is a field of the protobuf message it stands for, under the name
// protojson gives it, and survives the trip through it (a renamed or
// retyped field in agent.proto fails here, not in a pod's ADD).
func TestAgentJSONMessagesMatchProto(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		plain any // a pointer to a value with every field set
		msg   proto.Message
	}{
		{&agentjson.AddEndpointRequest{Namespace: "ns", Pod: "p", ContainerID: "c", Netns: "/run/netns/x", Ifindex: 7, MAC: "02:00:00:00:00:01", NodeMAC: "02:00:00:00:00:02", Ifname: "eth0"}, &api.AddEndpointRequest{}},
		{&agentjson.AddEndpointResponse{IPs: []string{"10.0.0.1"}, Identity: 1234, EndpointID: 9, Gateways: []string{"10.0.0.0"}, PodCIDRs: []string{"10.0.0.0/24"}, MTU: 1450}, &api.AddEndpointResponse{}},
		{&agentjson.DeleteEndpointRequest{Namespace: "ns", Pod: "p", ContainerID: "c"}, &api.DeleteEndpointRequest{}},
		{&agentjson.ListEndpointsRequest{ContainerID: "c"}, &api.ListEndpointsRequest{}},
		{&agentjson.ListEndpointsResponse{Endpoints: []agentjson.LocalEndpoint{{Namespace: "ns", Pod: "p", ContainerID: "c", Ifname: "eth0", Netns: "/n", Ifindex: 3, IPs: []string{"10.0.0.2"}, Identity: 5, EndpointID: 6, Gateways: []string{"10.0.0.0"}}}}, &api.ListEndpointsResponse{}},
		{&agentjson.StatusRequest{}, &api.StatusRequest{}},
		{&agentjson.StatusResponse{Node: "n1", State: "degraded", Reasons: []string{"etcd"}}, &api.StatusResponse{}},
	} {
		name := reflect.TypeOf(tt.plain).Elem().Name()
		t.Run(name, func(t *testing.T) {
			if err := allFieldsSet(reflect.ValueOf(tt.plain).Elem()); err != nil {
				t.Fatalf("the test's %s value: %v", name, err)
			}
			b, err := json.Marshal(tt.plain)
			if err != nil {
				t.Fatal(err)
			}
			if err := protojson.Unmarshal(b, tt.msg); err != nil {
				t.Fatalf("api.%s does not take agentjson's %s: %v", name, b, err)
			}
			back, err := protojson.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			got := reflect.New(reflect.TypeOf(tt.plain).Elem()).Interface()
			if err := json.Unmarshal(back, got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.plain) {
				t.Fatalf("through api.%s: %+v (%s), want %+v", name, got, back, tt.plain)
			}
		})
	}
}

// allFieldsSet reports a zero field of v (a struct), in nested structs
// and slices of structs too.
func allFieldsSet(v reflect.Value) error {
	for i := range v.NumField() {
		f := v.Field(i)
		if f.IsZero() {
			return errors.New(v.Type().Field(i).Name + " is not set")
		}
		if f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct {
			for j := range f.Len() {
				if err := allFieldsSet(f.Index(j)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// TestAgentJSONAPI drives the JSON form of the API on the agent's socket
// beside gRPC: calls and their errors, several calls on one connection,
// a silent connection that does not hold up others, and bad requests.
func TestAgentJSONAPI(t *testing.T) {
	t.Parallel()
	cfg, _, _ := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A connection that never says which protocol it speaks.
	silent, err := net.Dial("unix", cfg.APISocket)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	c, err := agentjson.Dial(ctx, cfg.APISocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var st agentjson.StatusResponse
	if err := c.Call(ctx, "Status", agentjson.StatusRequest{}, &st); err != nil || st.Node != cfg.Node || st.State != nodeagent.StateOK {
		t.Fatalf("Status = %+v, %v; want node %s, ok", st, err, cfg.Node)
	}
	var add agentjson.AddEndpointResponse
	req := agentjson.AddEndpointRequest{Namespace: "shop", Pod: "web-1", Ifindex: 1}
	// (A request without labels waits for the pod's metadata in etcd,
	// which nobody writes here: the call's deadline ends the wait.)
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	err = c.Call(short, "AddEndpoint", req, &add)
	cancelShort()
	var je *agentjson.Error
	if errors.As(err, &je) {
		if je.Code != agentjson.CodeNotFound || !strings.Contains(je.Message, "the caller's deadline") {
			t.Fatalf("AddEndpoint without metadata = %v; want NotFound at the caller's deadline from the agent, or the caller's own deadline", err)
		}
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AddEndpoint without metadata = %v; want a deadline", err)
	}

	// The same connection's next call, after the one that timed out on
	// the caller's side, would read that call's late answer: a client
	// whose call failed on its side redials (mesh-cni exits).
	c2, err := agentjson.Dial(ctx, cfg.APISocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	err = c2.Call(ctx, "AddEndpoint", agentjson.AddEndpointRequest{Namespace: "Bad Namespace", Pod: "x"}, &add)
	if !errors.As(err, &je) || je.Code != agentjson.CodeInvalidArgument || !strings.Contains(je.Message, "Bad Namespace") {
		t.Fatalf("AddEndpoint with a bad namespace = %v; want InvalidArgument naming it", err)
	}
	var list agentjson.ListEndpointsResponse
	if err := c2.Call(ctx, "ListEndpoints", agentjson.ListEndpointsRequest{}, &list); err != nil || len(list.Endpoints) != 0 {
		t.Fatalf("ListEndpoints = %+v, %v; want none", list, err)
	}
	if err := c2.Call(ctx, "DumpIPCache", struct{}{}, nil); !errors.As(err, &je) || je.Code != agentjson.CodeUnimplemented {
		t.Fatalf("a stream over JSON = %v; want Unimplemented", err)
	}
	if err := c2.Call(ctx, "Status", map[string]any{"bogus": 1}, nil); !errors.As(err, &je) || je.Code != agentjson.CodeInvalidArgument {
		t.Fatalf("Status with an unknown field = %v; want InvalidArgument", err)
	}

	// Raw lines: not JSON, and JSON split across writes.
	raw, err := net.Dial("unix", cfg.APISocket)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(raw)
	for _, tc := range []struct{ send, want string }{
		{"{not json\n", agentjson.CodeInvalidArgument},
		{`{"method":"Sta`, ""},
		{`tus"}` + "\n", ""},
	} {
		if _, err := raw.Write([]byte(tc.send)); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(tc.send, "\n") {
			continue
		}
		line, err := agentjson.ReadLine(r)
		if err != nil {
			t.Fatal(err)
		}
		var resp agentjson.Response
		if err := json.Unmarshal(line, &resp); err != nil {
			t.Fatalf("answer %q: %v", line, err)
		}
		switch {
		case tc.want != "" && (resp.Error == nil || resp.Error.Code != tc.want):
			t.Fatalf("answer to %q = %s; want error %s", tc.send, line, tc.want)
		case tc.want == "" && (resp.Error != nil || !strings.Contains(string(resp.Result), cfg.Node)):
			t.Fatalf("answer to a split Status = %s; want the status", line)
		}
	}
	// gRPC on the same socket still works.
	if _, err := apiClient(t, ta).Status(ctx, &api.StatusRequest{}); err != nil {
		t.Fatalf("gRPC Status beside JSON: %v", err)
	}
}
