package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/nodeagent"
)

// agentFlags are the flags of the commands that ask the local agent.
type agentFlags struct {
	socket  string
	timeout time.Duration
	format  string
}

func addAgentFlags(cmd *cobra.Command, f *agentFlags) {
	def := nodeagent.DefaultAPISocket
	if v := os.Getenv("MESHPLANE_AGENT_SOCKET"); v != "" {
		def = v
	}
	cmd.Flags().StringVar(&f.socket, "agent-socket", def, "the local agent's API socket (env MESHPLANE_AGENT_SOCKET)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for the agent")
	addOutputFlag(cmd, &f.format)
}

// dialAgent connects to the agent's unix socket and checks it answers, so
// that a missing or dead agent is a clear error.
func dialAgent(ctx context.Context, f agentFlags) (api.AgentClient, func(), error) {
	if err := checkFormat(f.format); err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(f.socket); err != nil {
		return nil, nil, fmt.Errorf("no agent API at %s (%w): is mesh-agent running on this node? pass --agent-socket to point at its --api-socket", f.socket, errors.Unwrap(err))
	}
	// gRPC's unix:// takes an absolute path only ("unix://rel/x" reads
	// "rel" as an authority): make a relative one absolute.
	path, err := filepath.Abs(f.socket)
	if err != nil {
		return nil, nil, fmt.Errorf("--agent-socket %s: %w", f.socket, err)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("agent API %s: %w", f.socket, err)
	}
	return api.NewAgentClient(conn), func() { _ = conn.Close() }, nil
}

// agentErr makes a gRPC error readable; an agent that does not answer is
// told apart by its gRPC code, not by the message.
func agentErr(socket string, err error) error {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("the agent at %s does not answer: is mesh-agent running? (%w)", socket, err)
	}
	return fmt.Errorf("agent %s: %w", socket, err)
}

// callAgent dials the agent named by f and calls fn with --timeout; fn's
// error is made readable with agentErr.
func callAgent(cmd *cobra.Command, f agentFlags, fn func(context.Context, api.AgentClient) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	client, closeFn, err := dialAgent(ctx, f)
	if err != nil {
		return err
	}
	defer closeFn()
	if err := fn(ctx, client); err != nil {
		return agentErr(f.socket, err)
	}
	return nil
}

var protoJSON = protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true, UseProtoNames: true}

func writeProto(w io.Writer, m proto.Message) error {
	b, err := protoJSON.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func newStatusCmd(o *options) *cobra.Command {
	var f agentFlags
	var wait bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the local agent's health: etcd, gossip, caches, maps",
		Long: `status asks the agent on this node (over its API socket) how it is: its
etcd session, gossip members, watch caches and eBPF maps. With --wait it
waits, up to --timeout, until the agent is ok, and fails if it does not get
there.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			// With --wait, an agent that is starting may not have made its
			// socket yet.
			for wait && ctx.Err() == nil {
				if _, err := os.Stat(f.socket); err == nil {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			client, closeFn, err := dialAgent(ctx, f)
			if err != nil {
				return err
			}
			defer closeFn()
			var st *api.StatusResponse
			for {
				st, err = client.Status(ctx, &api.StatusRequest{}, grpc.WaitForReady(wait))
				if err == nil && (!wait || st.State == nodeagent.StateOK) {
					break
				}
				if ctx.Err() != nil {
					if err != nil {
						return agentErr(f.socket, err)
					}
					_ = printStatus(o.stdout, st, f.format)
					return fmt.Errorf("agent is %s after %s: %s", st.State, f.timeout, strings.Join(st.Reasons, "; "))
				}
				if err != nil && !wait {
					return agentErr(f.socket, err)
				}
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
			return printStatus(o.stdout, st, f.format)
		},
	}
	addAgentFlags(cmd, &f)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the agent is ok (up to --timeout)")
	return cmd
}

func printStatus(w io.Writer, st *api.StatusResponse, format string) error {
	if format == formatJSON {
		return writeProto(w, st)
	}
	fmt.Fprintf(w, "Node:     %s (cluster %s, ID %d), agent %s, up %s\n", st.Node, st.Cluster, st.ClusterId, st.Version,
		(time.Duration(st.UptimeSeconds * float64(time.Second))).Round(time.Second))
	fmt.Fprintf(w, "State:    %s\n", strings.ToUpper(st.State))
	for _, r := range st.Reasons {
		fmt.Fprintf(w, "          - %s\n", r)
	}
	if e := st.Etcd; e != nil {
		fmt.Fprintf(w, "etcd:     %s to %s, lease %x (generation %d), %d keys owned", e.State, strings.Join(e.Endpoints, ","), e.LeaseId, e.SessionGeneration, e.OwnedKeys)
		if e.Repairs > 0 {
			fmt.Fprintf(w, ", %d rewritten after a change behind the agent's back", e.Repairs)
		}
		if e.LastError != "" {
			fmt.Fprintf(w, ", last error: %s", e.LastError)
		}
		fmt.Fprintln(w)
	}
	if g := st.Gossip; g != nil {
		fmt.Fprintf(w, "Gossip:   %s: %d alive, %d suspect, %d unresponsive, %d restarting, %d dead, %d left (health score %d, %d unconfirmed deaths)\n",
			g.Address, g.Alive, g.Suspect, g.Unresponsive, g.Restarting, g.Dead, g.Left, g.HealthScore, g.UnconfirmedDeaths)
	}
	if ip := st.Ipam; ip != nil {
		fmt.Fprintf(w, "IPAM:     %s: %d pod IPs used, %d free", orNone(ip.PodCidrs), ip.Used, ip.Free)
		if ip.Unreferenced > 0 {
			fmt.Fprintf(w, ", %d held for pods with no state file or etcd entry", ip.Unreferenced)
		}
		if len(ip.Conflicts) > 0 {
			fmt.Fprintf(w, ", %d in conflict", len(ip.Conflicts))
		}
		fmt.Fprintln(w)
	}
	if r := st.Routing; r != nil && r.Mode != "" {
		fmt.Fprintf(w, "Routing:  %s", r.Mode)
		if r.TunnelDevice != "" {
			fmt.Fprintf(w, " (%s, UDP %d)", r.TunnelDevice, r.TunnelPort)
		}
		fmt.Fprintf(w, ", %d routes to other nodes, pod MTU %d (underlay %d)", r.Routes, r.PodMtu, r.UnderlayMtu)
		if r.LastError != "" {
			fmt.Fprintf(w, ", last error: %s", r.LastError)
		}
		fmt.Fprintln(w)
		for _, u := range r.Unreachable {
			fmt.Fprintf(w, "          unreachable: %s\n", u)
		}
	}
	if st.PolicyRevision > 0 {
		fmt.Fprintf(w, "Policies: enforced up to etcd revision %d\n", st.PolicyRevision)
	}
	fmt.Fprintln(w)
	// INVALID is how many keys hold a value the agent cannot decode now;
	// SEEN how many such values it has seen.
	t := newTable(w, "CACHE", "ENTRIES", "SYNCED", "REVISION", "RELISTS", "INVALID", "SEEN")
	var invalid []*api.InvalidValue
	for _, c := range st.Caches {
		t.row(c.Name, fmt.Sprint(c.Entries), fmt.Sprint(c.Synced), fmt.Sprint(c.Revision), fmt.Sprint(c.Relists), fmt.Sprint(c.InvalidNow), fmt.Sprint(c.Invalid))
		invalid = append(invalid, c.InvalidValues...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(invalid) > 0 {
		fmt.Fprintln(w)
		t = newTable(w, "INVALID KEY", "REVISION", "IN FORCE", "REASON")
		for _, v := range invalid {
			t.row(v.Key, fmt.Sprint(v.ModRevision), v.InForce, v.Reason)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	t = newTable(w, "MAP", "DESIRED", "INSTALLED", "MAX", "PENDING", "SYNCED", "ERRORS", "LAST ERROR")
	for _, m := range st.Maps {
		last := m.LastError
		if last == "" {
			last = "-"
		}
		t.row(m.Name, fmt.Sprint(m.Desired), fmt.Sprint(m.Installed), fmt.Sprint(m.MaxEntries), fmt.Sprint(m.Pending),
			fmt.Sprint(m.Synced), fmt.Sprint(m.Errors), last)
	}
	return t.flush()
}

func newNodeCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Inspect the cluster's nodes"}
	var f agentFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List nodes with their gossip health, as the local agent sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r *api.ListNodesResponse
			err := callAgent(cmd, f, func(ctx context.Context, c api.AgentClient) (err error) {
				r, err = c.ListNodes(ctx, &api.ListNodesRequest{})
				return err
			})
			if err != nil {
				return err
			}
			if f.format == formatJSON {
				return writeProto(o.stdout, r)
			}
			t := newTable(o.stdout, "NAME", "HEALTH", "SINCE", "IPS", "POD CIDRS", "GOSSIP", "VERSION", "REGISTERED")
			for _, n := range r.Nodes {
				name := n.Name
				if n.Local {
					name += " (local)"
				}
				since := "-"
				if n.HealthSinceUnixMs > 0 {
					since = time.Since(time.UnixMilli(n.HealthSinceUnixMs)).Round(time.Second).String()
				}
				t.row(name, n.Health, since, orNone(n.Ips), orNone(n.PodCidrs), n.GossipAddress, n.Version, fmt.Sprint(n.Registered))
			}
			return t.flush()
		},
	}
	addAgentFlags(list, &f)
	cmd.AddCommand(list)
	return cmd
}

func newBPFCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "Dump the local agent's eBPF maps as installed in the kernel"}
	cmd.AddCommand(
		bpfListCmd(o, "ipcache", "IP/prefix to identity and node address", dumper(
			func(ctx context.Context, c api.AgentClient) (grpc.ServerStreamingClient[api.IPCacheChunk], error) {
				return c.DumpIPCache(ctx, &api.DumpRequest{})
			},
			func(c *api.IPCacheChunk) []*api.IPCacheEntry { return c.Entries },
			func(es []*api.IPCacheEntry) proto.Message { return &api.IPCacheChunk{Entries: es} },
			[]string{"PREFIX", "IDENTITY", "NODE IP", "FLAGS"},
			func(e *api.IPCacheEntry) []string {
				return []string{e.Prefix, fmt.Sprint(e.Identity), dash(e.NodeIp), dash(e.Flags)}
			})),
		bpfListCmd(o, "endpoints", "local pod IP to endpoint, interface and identity", dumper(
			func(ctx context.Context, c api.AgentClient) (grpc.ServerStreamingClient[api.EndpointChunk], error) {
				return c.DumpEndpoints(ctx, &api.DumpRequest{})
			},
			func(c *api.EndpointChunk) []*api.EndpointEntry { return c.Entries },
			func(es []*api.EndpointEntry) proto.Message { return &api.EndpointChunk{Entries: es} },
			[]string{"IP", "ENDPOINT", "IFINDEX", "IDENTITY", "MAC", "FLAGS"},
			func(e *api.EndpointEntry) []string {
				return []string{e.Ip, fmt.Sprint(e.EndpointId), fmt.Sprint(e.Ifindex), fmt.Sprint(e.Identity), dash(e.Mac), dash(e.Flags)}
			})),
		bpfListCmd(o, "policy", "per-endpoint verdicts by remote identity, direction, protocol and port", dumper(
			func(ctx context.Context, c api.AgentClient) (grpc.ServerStreamingClient[api.PolicyChunk], error) {
				return c.DumpPolicy(ctx, &api.DumpRequest{})
			},
			func(c *api.PolicyChunk) []*api.PolicyEntry { return c.Entries },
			func(es []*api.PolicyEntry) proto.Message { return &api.PolicyChunk{Entries: es} },
			[]string{"ENDPOINT", "DIRECTION", "IDENTITY", "PROTO", "PORTS", "VERDICT"},
			func(e *api.PolicyEntry) []string {
				ports := "any"
				if e.Port != 0 {
					ports = fmt.Sprint(e.Port)
					if e.PortEnd > e.Port {
						ports += "-" + fmt.Sprint(e.PortEnd)
					}
				}
				id := fmt.Sprint(e.RemoteIdentity)
				if e.RemoteIdentity == 0 {
					id = "any"
				}
				return []string{fmt.Sprint(e.EndpointId), e.Direction, id, protoName(e.Protocol), ports, e.Verdict}
			})),
		bpfListCmd(o, "cidr", "the prefixes policies' ipBlocks name, with their CIDR identities", dumper(
			func(ctx context.Context, c api.AgentClient) (grpc.ServerStreamingClient[api.IPCacheChunk], error) {
				return c.DumpCIDR(ctx, &api.DumpRequest{})
			},
			func(c *api.IPCacheChunk) []*api.IPCacheEntry { return c.Entries },
			func(es []*api.IPCacheEntry) proto.Message { return &api.IPCacheChunk{Entries: es} },
			[]string{"PREFIX", "IDENTITY"},
			func(e *api.IPCacheEntry) []string { return []string{e.Prefix, fmt.Sprint(e.Identity)} })),
		bpfListCmd(o, "services", "service frontends and their backends", dumper(
			func(ctx context.Context, c api.AgentClient) (grpc.ServerStreamingClient[api.ServiceChunk], error) {
				return c.DumpServices(ctx, &api.DumpRequest{})
			},
			func(c *api.ServiceChunk) []*api.ServiceEntry { return c.Entries },
			func(es []*api.ServiceEntry) proto.Message { return &api.ServiceChunk{Entries: es} },
			[]string{"FRONTEND", "PROTO", "SERVICE ID", "BACKENDS"},
			func(e *api.ServiceEntry) []string {
				return []string{e.Frontend, protoName(e.Protocol), fmt.Sprint(e.ServiceId), orNone(e.Backends)}
			})),
	)
	return cmd
}

// dumper returns the body of a `bpf X list` command: stream a dump, then
// print it as one JSON message or as a table.
func dumper[C any, E any](
	open func(context.Context, api.AgentClient) (grpc.ServerStreamingClient[C], error),
	entries func(*C) []E,
	wrap func([]E) proto.Message,
	header []string,
	row func(E) []string,
) func(context.Context, api.AgentClient, io.Writer, string) error {
	return func(ctx context.Context, c api.AgentClient, w io.Writer, format string) error {
		s, err := open(ctx, c)
		if err != nil {
			return err
		}
		all, err := drain(s, entries)
		if err != nil {
			return err
		}
		if format == formatJSON {
			return writeProto(w, wrap(all))
		}
		t := newTable(w, header...)
		for _, e := range all {
			t.row(row(e)...)
		}
		return t.flush()
	}
}

func bpfListCmd(o *options, name, what string, run func(context.Context, api.AgentClient, io.Writer, string) error) *cobra.Command {
	cmd := &cobra.Command{Use: name, Short: "The " + name + " map: " + what}
	var f agentFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List the " + name + " map's entries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return callAgent(cmd, f, func(ctx context.Context, c api.AgentClient) error {
				return run(ctx, c, o.stdout, f.format)
			})
		},
	}
	addAgentFlags(list, &f)
	cmd.AddCommand(list)
	return cmd
}

func drain[C any, E any](s grpc.ServerStreamingClient[C], entries func(*C) []E) ([]E, error) {
	var all []E
	for {
		c, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return all, nil
		}
		if err != nil {
			return nil, err
		}
		all = append(all, entries(c)...)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func protoName(p uint32) string {
	switch p {
	case 0:
		return "any"
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 132:
		return "SCTP"
	}
	return fmt.Sprint(p)
}
