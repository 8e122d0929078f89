// Package agentjson is the agent API's unary methods as JSON: one request
// and one answer per line, on the agent's API socket beside gRPC (the
// agent tells the two apart by a connection's first byte). It is for a
// client that must start fast and stay small: mesh-cni, which the
// container runtime executes for every pod's ADD and DEL, and which would
// spend more time starting gRPC than doing its work.
//
// A request is {"method":"AddEndpoint","params":{...},"timeout_ms":N}
// and its answer {"result":{...}} or {"error":{"code":"NotFound",
// "message":"..."}}. Method is the method's name in agent.proto; params
// and result are the protobuf messages in their JSON form (protojson:
// lowerCamelCase names, as the types below spell them); code is the gRPC
// status code's name. Several requests may follow each other on one
// connection, each answered before the next is read.
//
// The package uses the standard library only: the plugin links no gRPC
// or protobuf. The message types hold the fields the plugin uses, named as
// protojson names them; nodeagent's tests check them against api's
// messages, so a renamed field fails there.
package agentjson

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// FirstByte is the first byte of every JSON connection: a gRPC
// connection starts with the HTTP/2 preface ("PRI * HTTP/2.0...").
const FirstByte = '{'

// MaxLine bounds a request or an answer (a ListEndpoints answer of a full
// node is about 100 KiB).
const MaxLine = 16 << 20

// ErrTooLong is returned for a line longer than MaxLine.
var ErrTooLong = errors.New("agentjson: message longer than 16 MiB")

// Request is one call.
type Request struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
	// TimeoutMS is the caller's deadline, as gRPC sends its own: the
	// agent gives up on the call after it (0: no deadline).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// Response is one answer: a result or an error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a failed call: the gRPC status code's name and the agent's
// message.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// The codes a client tells apart (gRPC's names).
const (
	CodeInvalidArgument    = "InvalidArgument"
	CodeFailedPrecondition = "FailedPrecondition"
	CodeResourceExhausted  = "ResourceExhausted"
	CodeNotFound           = "NotFound"
	CodeDeadlineExceeded   = "DeadlineExceeded"
	CodeUnavailable        = "Unavailable"
	CodeUnimplemented      = "Unimplemented"
	CodeInternal           = "Internal"
)

// ReadLine reads one line (without its newline) of at most MaxLine bytes.
func ReadLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > MaxLine+1 {
			return nil, ErrTooLong
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return bytes.TrimSuffix(line, []byte{'\n'}), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// WriteLine writes v as one line of JSON.
func WriteLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > MaxLine {
		return ErrTooLong
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Conn is a client's connection to the agent.
type Conn struct {
	c net.Conn
	r *bufio.Reader
}

// Dial connects to the agent's API socket.
func Dial(ctx context.Context, socket string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, r: bufio.NewReader(c)}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Call calls method with in as its params and decodes the result into
// out (nil: the result is not read). A failed call's error is an *Error;
// any other error is the connection's (the agent went away, or ctx
// ended).
func (c *Conn) Call(ctx context.Context, method string, in, out any) error {
	params, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("agentjson: %s params: %w", method, err)
	}
	req := Request{Method: method, Params: params}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return context.DeadlineExceeded
		}
		req.TimeoutMS = max(1, left.Milliseconds())
		_ = c.c.SetDeadline(dl)
	} else {
		_ = c.c.SetDeadline(time.Time{})
	}
	// A ctx cancelled before its deadline ends the call too.
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := WriteLine(c.c, req); err != nil {
		return c.ioError(ctx, err)
	}
	line, err := ReadLine(c.r)
	if err != nil {
		return c.ioError(ctx, err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("agentjson: %s: the agent's answer is not JSON: %w", method, err)
	}
	if resp.Error != nil {
		return resp.Error
	}
	if out == nil || len(resp.Result) == 0 {
		return nil
	}
	if err := json.Unmarshal(resp.Result, out); err != nil {
		return fmt.Errorf("agentjson: %s result: %w", method, err)
	}
	return nil
}

// ioError prefers ctx's error to the i/o timeout it caused (the
// connection's deadline may fire before ctx's timer).
func (c *Conn) ioError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	var ne net.Error
	if dl, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(dl) {
		return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return err
}

// The messages mesh-cni sends and reads (fields as protojson names them).

// AddEndpointRequest is api.AddEndpointRequest without the labels and
// ports (the plugin never sends them: they come from etcd).
type AddEndpointRequest struct {
	Namespace   string `json:"namespace,omitempty"`
	Pod         string `json:"pod,omitempty"`
	ContainerID string `json:"containerId,omitempty"`
	Netns       string `json:"netns,omitempty"`
	Ifindex     uint32 `json:"ifindex,omitempty"`
	MAC         string `json:"mac,omitempty"`
	NodeMAC     string `json:"nodeMac,omitempty"`
	Ifname      string `json:"ifname,omitempty"`
}

// AddEndpointResponse is api.AddEndpointResponse.
type AddEndpointResponse struct {
	IPs        []string `json:"ips,omitempty"`
	Identity   uint32   `json:"identity,omitempty"`
	EndpointID uint32   `json:"endpointId,omitempty"`
	Gateways   []string `json:"gateways,omitempty"`
	PodCIDRs   []string `json:"podCidrs,omitempty"`
	MTU        uint32   `json:"mtu,omitempty"`
}

// DeleteEndpointRequest is api.DeleteEndpointRequest.
type DeleteEndpointRequest struct {
	Namespace   string `json:"namespace,omitempty"`
	Pod         string `json:"pod,omitempty"`
	ContainerID string `json:"containerId,omitempty"`
}

// ListEndpointsRequest is api.ListEndpointsRequest.
type ListEndpointsRequest struct {
	ContainerID string `json:"containerId,omitempty"`
}

// ListEndpointsResponse is api.ListEndpointsResponse.
type ListEndpointsResponse struct {
	Endpoints []LocalEndpoint `json:"endpoints,omitempty"`
}

// LocalEndpoint is api.LocalEndpoint.
type LocalEndpoint struct {
	Namespace   string   `json:"namespace,omitempty"`
	Pod         string   `json:"pod,omitempty"`
	ContainerID string   `json:"containerId,omitempty"`
	Ifname      string   `json:"ifname,omitempty"`
	Netns       string   `json:"netns,omitempty"`
	Ifindex     uint32   `json:"ifindex,omitempty"`
	IPs         []string `json:"ips,omitempty"`
	Identity    uint32   `json:"identity,omitempty"`
	EndpointID  uint32   `json:"endpointId,omitempty"`
	Gateways    []string `json:"gateways,omitempty"`
}

// StatusRequest is api.StatusRequest.
type StatusRequest struct{}

// StatusResponse is the part of api.StatusResponse the plugin reads.
type StatusResponse struct {
	Node    string   `json:"node,omitempty"`
	State   string   `json:"state,omitempty"`
	Reasons []string `json:"reasons,omitempty"`
}
