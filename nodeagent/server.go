package nodeagent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/service"
)

// ErrSocketInUse is returned when another agent serves the API socket.
var ErrSocketInUse = errors.New("API socket in use")

// chunk is how many entries a dump sends per message.
const chunk = 1024

type apiServer struct {
	api.UnimplementedAgentServer
	a      *Agent
	grpc   *grpc.Server
	health *health.Server
	path   string
	ln     *apiListener // gRPC's and agentjson's connections
}

// serveAPI listens on the API socket and serves until ctx ends. The
// socket is created under a temporary name, given its mode and group, and
// renamed into place: it is never reachable with looser permissions.
func (a *Agent) serveAPI(ctx context.Context, g *errgroup.Group) (*apiServer, error) {
	path := a.cfg.APISocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("API socket directory: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%w: %s answers: another agent runs on this node; stop it or pass another --api-socket", ErrSocketInUse, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale API socket: %w", err)
		}
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	// fail closes the listener and removes the socket file: a failed start
	// leaves no temporary socket behind.
	fail := func(what string, err error) (*apiServer, error) {
		_ = ln.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	mode := os.FileMode(0o600)
	if a.cfg.APISocketGroup >= 0 {
		mode = 0o660
		if err := os.Chown(tmp, -1, a.cfg.APISocketGroup); err != nil {
			return fail(fmt.Sprintf("API socket group %d", a.cfg.APISocketGroup), err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail("API socket", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail("API socket", err)
	}
	s := &apiServer{a: a, grpc: grpc.NewServer(), health: health.NewServer(), path: path}
	s.ln = newAPIListener(ln, s)
	api.RegisterAgentServer(s.grpc, s)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	g.Go(func() error {
		if err := s.grpc.Serve(s.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("API: %w", err)
		}
		return nil
	})
	g.Go(func() error { s.watchHealth(ctx); return nil })
	return s, nil
}

// watchHealth keeps the gRPC health status in step with the agent's.
func (s *apiServer) watchHealth(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		want := healthpb.HealthCheckResponse_NOT_SERVING
		if st := s.a.Status().State; st == StateOK {
			want = healthpb.HealthCheckResponse_SERVING
		}
		s.health.SetServingStatus("", want)
		s.health.SetServingStatus(api.Agent_ServiceDesc.ServiceName, want)
		select {
		case <-ctx.Done():
			s.stop()
			return
		case <-t.C:
		}
	}
}

func (s *apiServer) stop() {
	s.health.Shutdown()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		s.grpc.Stop()
		<-done
	}
	s.ln.stopJSON(2 * time.Second)
	_ = os.Remove(s.path)
}

// toStatus maps errors to gRPC codes, in one place.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInvalidEndpoint):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrEndpointExists):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrNoMetadata):
		// The CNI plugin tells it apart: the control plane has not
		// published the pod (yet), which is not the agent being down.
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, bpf.ErrMapFull):
		return status.Error(codes.ResourceExhausted, err.Error())
	default: // ErrNotReady and etcd's trouble: the caller retries
		return status.Error(codes.Unavailable, err.Error())
	}
}

func (s *apiServer) Status(context.Context, *api.StatusRequest) (*api.StatusResponse, error) {
	st := s.a.Status()
	r := &api.StatusResponse{
		Node: st.Node, Cluster: st.Cluster, ClusterId: uint32(st.ClusterID), Version: st.Version,
		State: st.State, Reasons: st.Reasons, UptimeSeconds: st.Uptime.Seconds(),
		Etcd: &api.EtcdStatus{
			Endpoints: st.Etcd.Endpoints, State: st.Etcd.State, LeaseId: st.Etcd.Lease, LastError: st.Etcd.LastError,
			SessionGeneration: int64(st.Etcd.Generation), OwnedKeys: int64(st.Etcd.OwnedKeys), Repairs: st.Etcd.Repairs,
		},
		Gossip: &api.GossipStatus{
			Address: st.Gossip.Address, Alive: uint32(st.Gossip.Alive), Suspect: uint32(st.Gossip.Suspect),
			Dead: uint32(st.Gossip.Dead), Left: uint32(st.Gossip.Left),
			Unresponsive: uint32(st.Gossip.Unresponsive), Restarting: uint32(st.Gossip.Restarting),
			HealthScore: uint32(st.Gossip.HealthScore), UnconfirmedDeaths: st.Gossip.UnconfirmedDeaths,
		},
		Ipam:           &api.IPAMStatus{Used: uint64(st.IPAM.Used), Free: uint64(st.IPAM.Free), Unreferenced: uint64(st.IPAM.Unreferenced)},
		PolicyRevision: st.PolicyRevision,
		Routing:        routingMsg(st.Routing),
	}
	for _, p := range st.IPAM.PodCIDRs {
		r.Ipam.PodCidrs = append(r.Ipam.PodCidrs, p.String())
	}
	for _, c := range st.IPAM.Conflicts {
		pc := &api.IPConflict{Ip: c.IP.String()}
		for _, o := range c.Owners {
			pc.Owners = append(pc.Owners, &api.IPClaim{Owner: o.Owner, Sources: o.Sources})
		}
		r.Ipam.Conflicts = append(r.Ipam.Conflicts, pc)
	}
	for _, c := range st.Caches {
		cs := &api.CacheStatus{
			Name: c.Name, Prefix: c.Prefix, Entries: uint64(c.Entries), Synced: c.Synced,
			Revision: c.Revision, Invalid: uint64(c.Invalid), Relists: uint64(c.Relists), InvalidNow: uint64(c.InvalidNow),
		}
		for _, v := range c.InvalidValues {
			cs.InvalidValues = append(cs.InvalidValues, &api.InvalidValue{
				Key: v.Key, Reason: v.Reason, ModRevision: v.ModRevision, LastGood: v.LastGood, InForce: v.InForce,
			})
		}
		r.Caches = append(r.Caches, cs)
	}
	for _, m := range st.Maps {
		ms := &api.MapStatus{
			Name: m.Name, PinPath: m.PinPath, MaxEntries: uint64(m.MaxEntries), Desired: uint64(m.Desired),
			Installed: uint64(m.Installed), Pending: uint64(m.Pending), Synced: m.Synced,
			Errors: uint64(m.Errors), LastError: m.LastError,
		}
		if !m.LastErrorAt.IsZero() {
			ms.LastErrorUnixMs = m.LastErrorAt.UnixMilli()
		}
		r.Maps = append(r.Maps, ms)
	}
	return r, nil
}

func (s *apiServer) ListNodes(context.Context, *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	var r api.ListNodesResponse
	for _, n := range s.a.Nodes() {
		pn := &api.Node{
			Name: n.Name, GossipAddress: n.GossipAddr, Health: n.Health, Version: n.Version,
			Labels: n.Labels, Registered: n.Registered, Local: n.Local,
		}
		if !n.HealthSince.IsZero() {
			pn.HealthSinceUnixMs = n.HealthSince.UnixMilli()
		}
		for _, ip := range n.IPs {
			pn.Ips = append(pn.Ips, ip.String())
		}
		for _, p := range n.PodCIDRs {
			pn.PodCidrs = append(pn.PodCidrs, p.String())
		}
		r.Nodes = append(r.Nodes, pn)
	}
	return &r, nil
}

func (s *apiServer) ListIdentities(_ *api.ListIdentitiesRequest, stream grpc.ServerStreamingServer[api.IdentityChunk]) error {
	ids := s.a.ids.Load()
	if ids == nil {
		return status.Error(codes.Unavailable, "the agent has not reached etcd yet")
	}
	all := ids.Identities()
	for len(all) > 0 {
		n := min(chunk, len(all))
		var c api.IdentityChunk
		for _, id := range all[:n] {
			c.Identities = append(c.Identities, identityMsg(id))
		}
		if err := stream.Send(&c); err != nil {
			return err
		}
		all = all[n:]
	}
	return nil
}

func identityMsg(id allocator.Identity) *api.Identity {
	return &api.Identity{Id: uint32(id.ID), Labels: id.Labels.String()}
}

// dump streams a map's installed entries in chunks.
func dump[K, V comparable, M any](m *bpf.Map[K, V], conv func(K, V) M, send func([]M) error) error {
	var buf []M
	var sendErr error
	err := m.Iterate(func(k K, v V) bool {
		buf = append(buf, conv(k, v))
		if len(buf) == chunk {
			sendErr = send(buf)
			buf = nil
		}
		return sendErr == nil
	})
	if sendErr != nil {
		return sendErr
	}
	if err != nil {
		return toStatus(err)
	}
	if len(buf) > 0 {
		return send(buf)
	}
	return nil
}

func (s *apiServer) DumpIPCache(_ *api.DumpRequest, stream grpc.ServerStreamingServer[api.IPCacheChunk]) error {
	return dump(s.a.maps.IPCache, func(k bpf.IPCacheKey, v bpf.IPCacheValue) *api.IPCacheEntry {
		e := &api.IPCacheEntry{Prefix: k.Prefix().String(), Identity: v.Identity, Flags: v.Flags.String()}
		if ip := v.NodeIP(); ip.IsValid() {
			e.NodeIp = ip.String()
		}
		return e
	}, func(es []*api.IPCacheEntry) error { return stream.Send(&api.IPCacheChunk{Entries: es}) })
}

func (s *apiServer) DumpCIDR(_ *api.DumpRequest, stream grpc.ServerStreamingServer[api.IPCacheChunk]) error {
	return dump(s.a.maps.CIDR, func(k bpf.IPCacheKey, v bpf.CIDRValue) *api.IPCacheEntry {
		return &api.IPCacheEntry{Prefix: k.Prefix().String(), Identity: v.Identity}
	}, func(es []*api.IPCacheEntry) error { return stream.Send(&api.IPCacheChunk{Entries: es}) })
}

func (s *apiServer) DumpEndpoints(_ *api.DumpRequest, stream grpc.ServerStreamingServer[api.EndpointChunk]) error {
	return dump(s.a.maps.Endpoints, func(k bpf.EndpointKey, v bpf.EndpointValue) *api.EndpointEntry {
		return &api.EndpointEntry{
			Ip: k.IP().String(), EndpointId: v.EndpointID, Ifindex: v.IfIndex, Identity: v.Identity,
			Flags: v.Flags.String(), Mac: net.HardwareAddr(v.PodMAC[:]).String(), NodeMac: net.HardwareAddr(v.NodeMAC[:]).String(),
		}
	}, func(es []*api.EndpointEntry) error { return stream.Send(&api.EndpointChunk{Entries: es}) })
}

func (s *apiServer) DumpPolicy(_ *api.DumpRequest, stream grpc.ServerStreamingServer[api.PolicyChunk]) error {
	return dump(s.a.maps.Policy, func(k bpf.PolicyKey, v bpf.PolicyValue) *api.PolicyEntry {
		port, bits := k.PortPrefix()
		e := &api.PolicyEntry{
			EndpointId: k.EndpointID, Direction: k.Direction.String(), RemoteIdentity: k.Identity,
			Protocol: uint32(k.Proto), Verdict: v.Verdict.String(), Cookie: v.Cookie,
		}
		if !k.AnyProto() && bits > 0 {
			e.Port = uint32(port)
			e.PortEnd = uint32(port) | (1<<(16-bits) - 1)
		}
		return e
	}, func(es []*api.PolicyEntry) error { return stream.Send(&api.PolicyChunk{Entries: es}) })
}

// DumpServices joins the services map's slots with the backends map.
func (s *apiServer) DumpServices(_ *api.DumpRequest, stream grpc.ServerStreamingServer[api.ServiceChunk]) error {
	type fe struct {
		addr  netip.AddrPort
		proto uint8
	}
	masters := make(map[fe]bpf.ServiceValue)
	slots := make(map[fe]map[uint16]uint32)
	err := s.a.maps.Services.Iterate(func(k bpf.ServiceKey, v bpf.ServiceValue) bool {
		f := fe{k.AddrPort(), k.Proto}
		if k.Slot == 0 {
			masters[f] = v
			return true
		}
		if slots[f] == nil {
			slots[f] = make(map[uint16]uint32)
		}
		slots[f][k.Slot] = v.BackendID
		return true
	})
	if err != nil {
		return toStatus(err)
	}
	backends, err := readAll(s.a.maps.Backends)
	if err != nil {
		return toStatus(err)
	}
	var buf []*api.ServiceEntry
	for f, m := range masters {
		e := &api.ServiceEntry{Frontend: f.addr.String(), Protocol: uint32(f.proto), ServiceId: m.ServiceID}
		for i := uint16(1); i <= m.Count; i++ {
			id, ok := slots[f][i]
			b, found := backends[bpf.BackendKey{ID: id}]
			switch {
			case !ok:
				e.Backends = append(e.Backends, fmt.Sprintf("slot %d missing", i))
			case !found:
				e.Backends = append(e.Backends, fmt.Sprintf("backend %d missing", id))
			default:
				e.Backends = append(e.Backends, b.AddrPort().String())
			}
		}
		buf = append(buf, e)
		if len(buf) == chunk {
			if err := stream.Send(&api.ServiceChunk{Entries: buf}); err != nil {
				return err
			}
			buf = nil
		}
	}
	if len(buf) > 0 {
		return stream.Send(&api.ServiceChunk{Entries: buf})
	}
	return nil
}

func (s *apiServer) AddEndpoint(ctx context.Context, r *api.AddEndpointRequest) (*api.AddEndpointResponse, error) {
	ports := make([]ContainerPort, 0, len(r.Ports))
	for _, p := range r.Ports {
		proto := service.Protocol(cmp.Or(p.Protocol, string(service.TCP))).Number()
		if proto == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "port %d: protocol %q: use TCP, UDP or SCTP", p.Port, p.Protocol)
		}
		if p.Port == 0 || p.Port > 65535 {
			return nil, status.Errorf(codes.InvalidArgument, "port %d: use 1-65535", p.Port)
		}
		ports = append(ports, ContainerPort{Name: p.Name, Port: uint16(p.Port), Protocol: proto})
	}
	ep, err := s.a.AddEndpoint(ctx, EndpointSpec{
		Namespace: r.Namespace, Pod: r.Pod, ContainerID: r.ContainerId, Labels: r.Labels, Netns: r.Netns,
		IfName: r.Ifname, IfIndex: r.Ifindex, MAC: r.Mac, NodeMAC: r.NodeMac, NamespaceLabels: r.NamespaceLabels,
		Ports: ports,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &api.AddEndpointResponse{Identity: uint32(ep.Identity), EndpointId: ep.ID, Mtu: uint32(max(s.a.podMTU(), 0))}
	for _, ip := range ep.IPs {
		resp.Ips = append(resp.Ips, ip.String())
	}
	for _, gw := range ep.Gateways {
		resp.Gateways = append(resp.Gateways, gw.String())
	}
	for _, c := range ep.CIDRs {
		resp.PodCidrs = append(resp.PodCidrs, c.String())
	}
	return resp, nil
}

func (s *apiServer) DeleteEndpoint(ctx context.Context, r *api.DeleteEndpointRequest) (*api.DeleteEndpointResponse, error) {
	if err := s.a.deleteEndpoint(ctx, r.Namespace, r.Pod, r.ContainerId); err != nil {
		return nil, toStatus(err)
	}
	return &api.DeleteEndpointResponse{}, nil
}

func (s *apiServer) ListEndpoints(_ context.Context, r *api.ListEndpointsRequest) (*api.ListEndpointsResponse, error) {
	var resp api.ListEndpointsResponse
	for _, ep := range s.a.Endpoints() {
		if r.ContainerId != "" && ep.ContainerID != r.ContainerId {
			continue
		}
		le := &api.LocalEndpoint{
			Namespace: ep.Namespace, Pod: ep.Pod, ContainerId: ep.ContainerID, Ifname: ep.IfName,
			Netns: ep.Netns, Ifindex: ep.IfIndex, Identity: uint32(ep.Identity), EndpointId: ep.ID,
		}
		for _, ip := range ep.IPs {
			le.Ips = append(le.Ips, ip.String())
		}
		for _, gw := range ep.Gateways {
			le.Gateways = append(le.Gateways, gw.String())
		}
		resp.Endpoints = append(resp.Endpoints, le)
	}
	return &resp, nil
}

// Observe sends the recent flows the request asks for, then, with
// follow, new ones until the client goes away.
func (s *apiServer) Observe(r *api.ObserveRequest, stream grpc.ServerStreamingServer[api.Flow]) error {
	f := flowFilter{pod: r.Pod, podOf: s.a.podOfAddr}
	switch r.Verdict {
	case "":
	case "forwarded":
		f.verdict = bpf.Forwarded
	case "dropped":
		f.verdict = bpf.Dropped
	default:
		return status.Errorf(codes.InvalidArgument, "verdict %q: use forwarded or dropped", r.Verdict)
	}
	if r.Ip != "" {
		ip, err := netip.ParseAddr(r.Ip)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "ip %q: not an IP address", r.Ip)
		}
		f.ip = ip.Unmap()
	}
	history, sub := s.a.flows.subscribe(f, int(min(r.Last, flowHistory)), r.Follow)
	if sub != nil {
		defer s.a.flows.unsubscribe(sub)
	}
	clock := newKtimeClock()
	for _, fl := range history {
		if err := stream.Send(s.a.flowMsg(fl, clock)); err != nil {
			return err
		}
	}
	if sub == nil {
		return nil
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case fl := <-sub.ch:
			if err := stream.Send(s.a.flowMsg(fl, clock)); err != nil {
				return err
			}
		}
	}
}
