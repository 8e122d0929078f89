package cni

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshplane/meshplane/api/agentjson"
)

// The plugin's errors, wrapped with the details (errors.Is).
var (
	// ErrAgentDown: the agent's socket does not answer.
	ErrAgentDown = errors.New("mesh-agent is not reachable")
	// ErrAgentNotReady: the agent answers but is still starting.
	ErrAgentNotReady = errors.New("mesh-agent is not ready")
	// ErrNoMetadata: the agent has no labels for the pod in etcd: the
	// control plane has not published it (yet).
	ErrNoMetadata = errors.New("no labels for the pod")
	// ErrRefused: the agent refused the request (bad input, or an
	// endpoint of the pod that contradicts it).
	ErrRefused = errors.New("mesh-agent refused the request")
)

// agent is a connection to mesh-agent's API socket, in the JSON form of
// its API (package agentjson): the plugin links no gRPC, so that the
// runtime's exec of it for every pod is cheap.
type agent struct {
	socket string
	conn   *agentjson.Conn
}

// dialAgent connects to the agent; an agent that is not running is a
// clear error at once.
func dialAgent(ctx context.Context, socket string) (*agent, error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	c, err := agentjson.Dial(dctx, socket)
	cancel()
	if err != nil {
		return nil, downError(socket, err)
	}
	return &agent{socket: socket, conn: c}, nil
}

func (a *agent) Close() error { return a.conn.Close() }

// The agent's methods the plugin calls. A failed call's error is mapped
// by fromStatus.

func (a *agent) AddEndpoint(ctx context.Context, r *agentjson.AddEndpointRequest) (*agentjson.AddEndpointResponse, error) {
	var out agentjson.AddEndpointResponse
	return &out, a.conn.Call(ctx, "AddEndpoint", r, &out)
}

func (a *agent) DeleteEndpoint(ctx context.Context, r *agentjson.DeleteEndpointRequest) error {
	return a.conn.Call(ctx, "DeleteEndpoint", r, nil)
}

func (a *agent) ListEndpoints(ctx context.Context, r *agentjson.ListEndpointsRequest) (*agentjson.ListEndpointsResponse, error) {
	var out agentjson.ListEndpointsResponse
	return &out, a.conn.Call(ctx, "ListEndpoints", r, &out)
}

func (a *agent) Status(ctx context.Context) (*agentjson.StatusResponse, error) {
	var out agentjson.StatusResponse
	return &out, a.conn.Call(ctx, "Status", agentjson.StatusRequest{}, &out)
}

func downError(socket string, err error) error {
	return fmt.Errorf("%w: %s: %w: is mesh-agent running on this node?", ErrAgentDown, socket, err)
}

// fromStatus maps the agent's errors (gRPC status codes; the agent's side
// of the mapping is nodeagent's toStatus) to the plugin's, in one place.
// what says what was asked, for the message.
func (a *agent) fromStatus(what string, err error) error {
	if err == nil {
		return nil
	}
	var st *agentjson.Error
	if !errors.As(err, &st) {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: mesh-agent at %s did not answer in time: %w", what, a.socket, err)
		}
		// The connection failed: the agent went away mid-call.
		return fmt.Errorf("%s: %w", what, downError(a.socket, err))
	}
	switch st.Code {
	case agentjson.CodeNotFound:
		return fmt.Errorf("%s: %w: %s", what, ErrNoMetadata, st.Message)
	case agentjson.CodeInvalidArgument, agentjson.CodeFailedPrecondition, agentjson.CodeResourceExhausted:
		return fmt.Errorf("%s: %w: %s", what, ErrRefused, st.Message)
	case agentjson.CodeDeadlineExceeded:
		return fmt.Errorf("%s: mesh-agent at %s did not answer in time: %s (if it was waiting for the pod's labels, keep its --pod-metadata-wait below the plugin's timeout)", what, a.socket, st.Message)
	case agentjson.CodeUnavailable:
		// The agent saying it is not ready (ErrNotReady, etcd trouble).
		return fmt.Errorf("%s: %w: %s", what, ErrAgentNotReady, st.Message)
	default:
		return fmt.Errorf("%s: mesh-agent: %s: %s", what, st.Code, st.Message)
	}
}
