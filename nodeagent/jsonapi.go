package nodeagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/api/agentjson"
)

// firstByteTimeout bounds how long a new connection to the API socket may
// stay silent before the agent knows whether it speaks gRPC or JSON.
const firstByteTimeout = 10 * time.Second

// apiListener is the API socket's listener as the gRPC server sees it: it
// accepts every connection, reads its first byte, serves JSON connections
// (package agentjson) itself, and hands the others, that byte included,
// to gRPC.
type apiListener struct {
	net.Listener
	srv   *apiServer
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	ctx    context.Context // of the JSON calls; cancelled by stopJSON
	cancel context.CancelFunc
	mu     sync.Mutex // mu guards open
	open   map[net.Conn]bool
	calls  sync.WaitGroup // registered connections (mu guards Add)
}

func newAPIListener(ln net.Listener, srv *apiServer) *apiListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &apiListener{
		Listener: ln, srv: srv, conns: make(chan net.Conn), done: make(chan struct{}),
		ctx: ctx, cancel: cancel, open: make(map[net.Conn]bool),
	}
	go l.acceptLoop()
	return l
}

func (l *apiListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			_ = l.Close()
			return
		}
		go l.sniff(c)
	}
}

// sniff sorts one connection by its first byte. Until then it counts as
// an idle JSON connection (stopJSON closes it).
func (l *apiListener) sniff(c net.Conn) {
	if !l.register(c) {
		_ = c.Close()
		return
	}
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(firstByteTimeout))
	first, err := r.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err == nil && first[0] == agentjson.FirstByte {
		l.serveJSON(c, r)
		err = errors.New("served")
	}
	l.unregister(c)
	if err != nil {
		_ = c.Close()
		return
	}
	select {
	case l.conns <- &peekedConn{Conn: c, r: r}:
	case <-l.done:
		_ = c.Close()
	}
}

// Accept returns the next gRPC connection.
func (l *apiListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting (the gRPC server calls it when it stops); JSON
// connections are left to stopJSON.
func (l *apiListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

// stopJSON closes the JSON connections: idle ones at once, ones in a
// call when it is answered, or after grace when ctx of the calls is
// cancelled.
func (l *apiListener) stopJSON(grace time.Duration) {
	_ = l.Close()
	l.mu.Lock()
	for c, busy := range l.open {
		if !busy {
			_ = c.Close()
		}
	}
	l.open = nil // from now on every answered connection is closed
	l.mu.Unlock()
	done := make(chan struct{})
	go func() { l.calls.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		l.cancel()
		<-done
	}
	l.cancel()
}

// register records c as an open JSON connection, idle; false means the
// listener is stopping (c is to be closed). Every registered connection
// is unregistered once.
func (l *apiListener) register(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open == nil {
		return false
	}
	l.open[c] = false
	l.calls.Add(1)
	return true
}

func (l *apiListener) unregister(c net.Conn) {
	l.mu.Lock()
	delete(l.open, c) // (a no-op once stopJSON has dropped the map)
	l.mu.Unlock()
	l.calls.Done()
}

// setBusy marks a registered c as in a call or idle; false means the
// listener is stopping and c is to be closed.
func (l *apiListener) setBusy(c net.Conn, busy bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open == nil {
		return false
	}
	l.open[c] = busy
	return true
}

// serveJSON answers the calls of one JSON connection until it closes.
func (l *apiListener) serveJSON(c net.Conn, r *bufio.Reader) {
	for {
		line, err := agentjson.ReadLine(r)
		if err != nil {
			if errors.Is(err, agentjson.ErrTooLong) {
				_ = agentjson.WriteLine(c, agentjson.Response{Error: &agentjson.Error{Code: agentjson.CodeInvalidArgument, Message: err.Error()}})
			}
			return
		}
		if !l.setBusy(c, true) {
			return
		}
		if err := agentjson.WriteLine(c, l.call(line)); err != nil {
			return
		}
		if !l.setBusy(c, false) {
			return
		}
	}
}

// call runs one request through the gRPC service's own handler (the same
// decoding, validation and error mapping as a gRPC call; no interceptor
// is installed on the gRPC server either).
func (l *apiListener) call(line []byte) agentjson.Response {
	fail := func(code codes.Code, msg string) agentjson.Response {
		return agentjson.Response{Error: &agentjson.Error{Code: code.String(), Message: msg}}
	}
	var req agentjson.Request
	if err := json.Unmarshal(line, &req); err != nil {
		return fail(codes.InvalidArgument, "the request is not a JSON object {\"method\":...,\"params\":...}: "+err.Error())
	}
	var md *grpc.MethodDesc
	for i := range api.Agent_ServiceDesc.Methods {
		if api.Agent_ServiceDesc.Methods[i].MethodName == req.Method {
			md = &api.Agent_ServiceDesc.Methods[i]
		}
	}
	if md == nil {
		return fail(codes.Unimplemented, "no unary method "+req.Method+" in "+api.Agent_ServiceDesc.ServiceName+" (streams need gRPC)")
	}
	ctx, cancel := l.ctx, context.CancelFunc(func() {})
	if req.TimeoutMS > 0 {
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.TimeoutMS)*time.Millisecond)
	}
	defer cancel()
	dec := func(v any) error {
		if len(req.Params) == 0 {
			return nil
		}
		if err := protojson.Unmarshal(req.Params, v.(proto.Message)); err != nil {
			return status.Error(codes.InvalidArgument, "params of "+req.Method+": "+err.Error())
		}
		return nil
	}
	out, err := md.Handler(l.srv, ctx, dec, nil)
	if err != nil {
		st := status.Convert(err)
		return fail(st.Code(), st.Message())
	}
	b, err := protojson.Marshal(out.(proto.Message))
	if err != nil {
		return fail(codes.Internal, "encode the answer of "+req.Method+": "+err.Error())
	}
	return agentjson.Response{Result: b}
}

// peekedConn is a connection whose first bytes were read into r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
