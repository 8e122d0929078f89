package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshplane/meshplane/api"
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

// agent is a connection to mesh-agent's API socket.
type agent struct {
	socket string
	conn   *grpc.ClientConn
	api.AgentClient
}

// dialAgent connects to the agent. It first dials the socket itself, so
// that an agent that is not running is a clear error at once rather than
// a gRPC retry until the deadline.
func dialAgent(ctx context.Context, socket string) (*agent, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	c, err := d.DialContext(dctx, "unix", socket)
	cancel()
	if err != nil {
		return nil, downError(socket, err)
	}
	_ = c.Close()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("mesh-agent at %s: %w", socket, err)
	}
	return &agent{socket: socket, conn: conn, AgentClient: api.NewAgentClient(conn)}, nil
}

func (a *agent) Close() error { return a.conn.Close() }

func downError(socket string, err error) error {
	return fmt.Errorf("%w: %s: %w: is mesh-agent running on this node?", ErrAgentDown, socket, err)
}

// fromStatus maps the agent's gRPC errors to the plugin's (the agent's
// side of the mapping is nodeagent's toStatus), in one place. what says
// what was asked, for the message.
func (a *agent) fromStatus(what string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch st.Code() {
	case codes.NotFound:
		return fmt.Errorf("%s: %w: %s", what, ErrNoMetadata, st.Message())
	case codes.InvalidArgument, codes.FailedPrecondition, codes.ResourceExhausted:
		return fmt.Errorf("%s: %w: %s", what, ErrRefused, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: mesh-agent at %s did not answer in time: %s (if it was waiting for the pod's labels, keep its --pod-metadata-wait below the plugin's timeout)", what, a.socket, st.Message())
	case codes.Unavailable:
		// Unavailable is the agent saying it is not ready (ErrNotReady,
		// etcd trouble), or gRPC saying the socket went away.
		if st.Message() != "" && isTransport(st) {
			return fmt.Errorf("%s: %w", what, downError(a.socket, errors.New(st.Message())))
		}
		return fmt.Errorf("%s: %w: %s", what, ErrAgentNotReady, st.Message())
	default:
		return fmt.Errorf("%s: mesh-agent: %s: %s", what, st.Code(), st.Message())
	}
}

// isTransport tells a connection failure (gRPC's own Unavailable) from an
// Unavailable the agent returned: gRPC's carry "connection error".
func isTransport(st *status.Status) bool {
	m := st.Message()
	for _, s := range []string{"connection error", "transport", "error reading from server", "connection refused", "no such file"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}
