package cli

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
)

func newIPAMCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ipam",
		Short: "Manage IPAM pools and inspect node CIDRs",
	}
	pool := &cobra.Command{
		Use:   "pool",
		Short: "Manage the cluster's IPAM pools",
	}
	pool.AddCommand(newPoolWriteCmd(o, "add"), newPoolWriteCmd(o, "update"), newPoolRemoveCmd(o), newPoolListCmd(o))
	cmd.AddCommand(pool, newIPAMNodesCmd(o), newIPAMShowCmd(o), newIPAMGCCmd(o))
	return cmd
}

type poolFlags struct {
	ipv4, ipv6     string
	mask4, mask6   int
	defaults, dual bool
	existOK        bool
}

func (f poolFlags) pool(name string) (ipam.Pool, error) {
	if f.defaults {
		if f.ipv4 != "" || f.ipv6 != "" {
			return ipam.Pool{}, fmt.Errorf("--default and --ipv4/--ipv6 exclude each other")
		}
		p := ipam.DefaultPool(f.dual)
		p.Name = name
		return p, nil
	}
	v4, err := ipam.ParseCIDRs(f.ipv4)
	if err != nil {
		return ipam.Pool{}, fmt.Errorf("--ipv4: %w", err)
	}
	v6, err := ipam.ParseCIDRs(f.ipv6)
	if err != nil {
		return ipam.Pool{}, fmt.Errorf("--ipv6: %w", err)
	}
	p := ipam.Pool{Name: name, IPv4: v4, IPv6: v6}
	if len(v4) > 0 {
		p.IPv4MaskSize = f.mask4
	}
	if len(v6) > 0 {
		p.IPv6MaskSize = f.mask6
	}
	return p, nil
}

func newPoolWriteCmd(o *options, verb string) *cobra.Command {
	var f poolFlags
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: map[string]string{"add": "Add a pool", "update": "Change a pool"}[verb],
		Long: `Pools are lists of IPv4 and/or IPv6 CIDRs, carved into node CIDRs of one
mask size per family. A pool may not overlap another; an update may not drop a
CIDR or change a mask size under node CIDRs that are claimed. Nothing is
written when the pool is refused.

The cluster record (see 'meshctl cluster') goes with the pools: it is created
from --cluster-name and --cluster-id when the cluster has none, and a record
with another ID refuses the write.

--default uses meshplane's default ranges: IPv4 10.192.0.0/12 with /24 per
node (chosen to avoid the 10.x ranges clouds, kubeadm and flannel use) and,
with --dual-stack, IPv6 fd6d:7368::/48 with /112 per node.`,
		Example: `  meshctl ipam pool add default --default --dual-stack
  meshctl ipam pool add pods --ipv4 10.192.0.0/12 --ipv4-mask-size 24
  meshctl ipam pool update pods --ipv4 10.192.0.0/12,10.208.0.0/12 --ipv4-mask-size 24`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := f.pool(args[0])
			if err != nil {
				return err
			}
			return o.withPools(cmd.Context(), true, func(ctx context.Context, pools *nodecidr.Pools) error {
				if verb == "add" {
					err = pools.Add(ctx, p)
					if err != nil && f.existOK && poolExists(ctx, pools, p) {
						fmt.Fprintf(o.stdout, "pool %s exists as given\n", p.Name)
						return nil
					}
				} else {
					err = pools.Update(ctx, p)
				}
				if err == nil {
					fmt.Fprintf(o.stdout, "pool %s %sed\n", p.Name, strings.TrimSuffix(verb, "e"))
				}
				return err
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.ipv4, "ipv4", "", "IPv4 CIDRs, comma-separated")
	fs.IntVar(&f.mask4, "ipv4-mask-size", ipam.DefaultIPv4MaskSize, "IPv4 node CIDR mask size")
	fs.StringVar(&f.ipv6, "ipv6", "", "IPv6 CIDRs, comma-separated")
	fs.IntVar(&f.mask6, "ipv6-mask-size", ipam.DefaultIPv6MaskSize, "IPv6 node CIDR mask size")
	fs.BoolVar(&f.defaults, "default", false, "use meshplane's default ranges")
	fs.BoolVar(&f.dual, "dual-stack", false, "with --default: add the default IPv6 range")
	if verb == "add" {
		fs.BoolVar(&f.existOK, "exist-ok", false, "succeed without writing when the pool exists exactly as given (an install's Job that runs again); a pool of that name that differs is still an error")
	}
	return cmd
}

// poolExists reports whether the cluster has p, CIDRs and mask sizes alike.
func poolExists(ctx context.Context, pools *nodecidr.Pools, p ipam.Pool) bool {
	have, err := pools.List(ctx)
	if err != nil {
		return false
	}
	i := slices.IndexFunc(have, func(q ipam.Pool) bool { return q.Name == p.Name })
	if i < 0 {
		return false
	}
	q := have[i]
	return slices.Equal(q.IPv4, p.IPv4) && slices.Equal(q.IPv6, p.IPv6) && q.IPv4MaskSize == p.IPv4MaskSize && q.IPv6MaskSize == p.IPv6MaskSize
}

func newPoolRemoveCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a pool that has no claimed node CIDRs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withPools(cmd.Context(), false, func(ctx context.Context, pools *nodecidr.Pools) error {
				if err := pools.Remove(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "pool %s removed\n", args[0])
				return nil
			})
		},
	}
}

// withPools runs f on the cluster's pools. With ensure (the commands that
// write a pool), the cluster record must say --cluster-name and
// --cluster-id first, and is created when absent: the pools and the
// record go together.
func (o *options) withPools(ctx context.Context, ensure bool, f func(context.Context, *nodecidr.Pools) error) (err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer closeClient(client, &err)
	if ensure {
		if err := o.ensureCluster(ctx, client); err != nil {
			return err
		}
	}
	pools, err := nodecidr.NewPools(client, o.clusterName)
	if err != nil {
		return err
	}
	return f(ctx, pools)
}

type ipamStatus struct {
	Pools []poolInfo            `json:"pools"`
	Nodes []nodecidr.NodeStatus `json:"nodes"`
}

type poolInfo struct {
	ipam.Pool
	Usage []nodecidr.PoolUsage `json:"usage"`
}

func (o *options) ipamStatus(ctx context.Context) (_ ipamStatus, err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return ipamStatus{}, err
	}
	defer closeClient(client, &err)
	pools, usage, nodes, bad, err := nodecidr.Status(ctx, client, o.clusterName)
	if err != nil {
		return ipamStatus{}, err
	}
	for _, b := range bad {
		fmt.Fprintf(o.stderr, "warning: skipping %v\n", b)
	}
	st := ipamStatus{Nodes: nodes, Pools: []poolInfo{}}
	if st.Nodes == nil {
		st.Nodes = []nodecidr.NodeStatus{}
	}
	for _, p := range pools {
		pi := poolInfo{Pool: p}
		for _, u := range usage {
			if u.Pool == p.Name {
				pi.Usage = append(pi.Usage, u)
			}
		}
		st.Pools = append(st.Pools, pi)
	}
	return st, nil
}

func newPoolListCmd(o *options) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List pools with how many node CIDRs are claimed",
		Args:  cobra.NoArgs,
		RunE: o.ipamStatusRunE(&format, func(st ipamStatus, _ []string, asJSON bool) error {
			if asJSON {
				return writeJSON(o.stdout, st.Pools)
			}
			t := newTable(o.stdout, "POOL", "FAMILY", "CIDRS", "NODE MASK", "CLAIMED", "NODE CIDRS", "STATE")
			for _, p := range st.Pools {
				for _, u := range p.Usage {
					cidrs, mask := p.CIDRs(u.Family)
					state := "ok"
					if u.Size.IsInt64() && int64(u.Claimed) >= u.Size.Int64() {
						state = "EXHAUSTED"
					}
					t.row(p.Name, u.Family.String(), joinPrefixes(cidrs), fmt.Sprintf("/%d", mask),
						fmt.Sprint(u.Claimed), u.Size.String(), state)
				}
			}
			return t.flush()
		}),
	}
	addOutputFlag(cmd, &format)
	return cmd
}

func newIPAMNodesCmd(o *options) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List nodes with their CIDRs",
		Long: `nodes lists every node that holds CIDRs, and whether it is alive (its node
record, on its lease, exists), with the pod IPs used and free as the node
last published them ("-" if it has not).`,
		Args: cobra.NoArgs,
		RunE: o.ipamStatusRunE(&format, func(st ipamStatus, _ []string, asJSON bool) error {
			if asJSON {
				return writeJSON(o.stdout, st.Nodes)
			}
			t := newTable(o.stdout, "NODE", "CIDRS", "ALIVE", "USED", "FREE")
			for _, n := range st.Nodes {
				used, free := "-", "-"
				if len(n.Usage) > 0 {
					u, f := 0, 0
					for _, x := range n.Usage {
						u, f = u+x.Used, f+x.Free
					}
					used, free = fmt.Sprint(u), fmt.Sprint(f)
				}
				t.row(n.Node, joinPrefixes(n.CIDRs), fmt.Sprint(n.Alive), used, free)
			}
			return t.flush()
		}),
	}
	addOutputFlag(cmd, &format)
	return cmd
}

func newIPAMShowCmd(o *options) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "show NODE",
		Short: "Show one node's CIDRs",
		Args:  cobra.ExactArgs(1),
		RunE: o.ipamStatusRunE(&format, func(st ipamStatus, args []string, asJSON bool) error {
			for _, n := range st.Nodes {
				if n.Node != args[0] {
					continue
				}
				if asJSON {
					return writeJSON(o.stdout, n)
				}
				t := newTable(o.stdout, "CIDR", "FAMILY", "POOL", "USED", "FREE")
				for _, c := range n.CIDRs {
					pool := "?"
					for _, p := range st.Pools {
						if p.Contains(c) {
							pool = p.Name
						}
					}
					used, free := "-", "-"
					for _, u := range n.Usage {
						if u.CIDR == c {
							used, free = fmt.Sprint(u.Used), fmt.Sprint(u.Free)
						}
					}
					t.row(c.String(), ipam.Of(c).String(), pool, used, free)
				}
				if err := t.flush(); err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "alive: %v\n", n.Alive)
				return nil
			}
			return fmt.Errorf("node %s holds no CIDRs in cluster %s", args[0], o.clusterName)
		}),
	}
	addOutputFlag(cmd, &format)
	return cmd
}

// ipamStatusRunE is the body the ipam read commands share: read the status,
// then print it, as JSON or a table.
func (o *options) ipamStatusRunE(format *string, print func(st ipamStatus, args []string, asJSON bool) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := checkFormat(*format); err != nil {
			return err
		}
		st, err := o.ipamStatus(cmd.Context())
		if err != nil {
			return err
		}
		return print(st, args, *format == formatJSON)
	}
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func newIPAMGCCmd(o *options) *cobra.Command {
	var (
		format string
		grace  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Reclaim the CIDRs of nodes that are gone",
		Long: `gc reclaims node CIDRs once, as the control plane does periodically. A first
pass marks nodes that hold CIDRs but have no node record (their lease is gone);
if there are any, gc waits --grace and a second pass frees the CIDRs of those
still gone. A node that comes back in between keeps its CIDRs: the reclaim is
a transaction that fails if the node record exists again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if err := checkFormat(format); err != nil {
				return err
			}
			if grace < 0 {
				return fmt.Errorf("--grace %s: use 0 or a positive duration", grace)
			}
			ctx := cmd.Context()
			client, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer closeClient(client, &err)
			g, err := nodecidr.NewGC(client, nodecidr.GCConfig{Cluster: o.clusterName, GracePeriod: grace})
			if err != nil {
				return err
			}
			res, err := g.Pass(ctx)
			if err != nil {
				return err
			}
			if res.Gone > 0 {
				fmt.Fprintf(o.stderr, "%d nodes gone, waiting %s\n", res.Gone, grace)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(grace):
				}
				if res, err = g.Pass(ctx); err != nil {
					return err
				}
			}
			if format == formatJSON {
				return writeJSON(o.stdout, res)
			}
			t := newTable(o.stdout)
			for _, r := range [][2]string{
				{"nodes", fmt.Sprint(res.Nodes)}, {"alive", fmt.Sprint(res.Alive)}, {"gone", fmt.Sprint(res.Gone)},
				{"reclaimed CIDRs", fmt.Sprint(res.Reclaimed)}, {"conflicts", fmt.Sprint(res.Conflicts)}, {"invalid", fmt.Sprint(res.Invalid)},
			} {
				t.row(r[0], r[1])
			}
			return t.flush()
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 30*time.Second, "how long a node must be gone before its CIDRs are reclaimed")
	addOutputFlag(cmd, &format)
	return cmd
}
