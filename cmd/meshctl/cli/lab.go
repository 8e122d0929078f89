package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/lab"
)

// labFlags are the flags every lab command shares.
type labFlags struct {
	runDir string
	bpffs  string
	name   string // --lab
}

func (f *labFlags) options(o *options) lab.Options {
	return lab.Options{RunDir: f.runDir, BPFFS: f.bpffs, Stdout: o.stderr}
}

// resolve is the lab a command acts on: --lab, or the only lab there is.
func (f *labFlags) resolve(o *options) (*lab.Lab, error) {
	name := f.name
	if name == "" {
		names, err := lab.List(f.options(o))
		if err != nil {
			return nil, err
		}
		switch len(names) {
		case 0:
			return nil, errors.New("no lab is running: start one with meshctl lab up -f FILE")
		case 1:
			name = names[0]
		default:
			return nil, fmt.Errorf("labs %s are running: pick one with --lab", strings.Join(names, ", "))
		}
	}
	return lab.Open(name, f.options(o))
}

func newLabCmd(o *options) *cobra.Command {
	f := &labFlags{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run clusters, nodes and pods as network namespaces on this machine",
		Long: `lab builds clusters on this machine from a topology file (docs/lab.md):
each node a network namespace on a bridge, with a mesh-agent inside it;
each pod a namespace with a veth to its node, an address and identity from
the agent, and an echo server on its ports; one etcd per cluster. It needs
root and a bpffs. The host's own network namespace is never changed.

  meshctl lab up -f lab/testdata/demo.yaml
  meshctl lab probe --from prod/client --to prod/web --port 80
  meshctl lab exec prod/client -- ip route
  meshctl lab down demo`,
	}
	cmd.PersistentFlags().StringVar(&f.runDir, "run-dir", lab.DefaultRunDir, "parent of the labs' run directories (state, logs, sockets)")
	cmd.PersistentFlags().StringVar(&f.bpffs, "bpffs", lab.DefaultBPFFS, "bpffs mount for the agents' pins")
	cmd.AddCommand(newLabUpCmd(o, f), newLabDownCmd(o, f), newLabShowCmd(o, f), newLabExecCmd(o, f), newLabProbeCmd(o, f),
		newLabLabelCmd(o, f), newLabNsexecCmd(), newLabEtcdCmd(o), newLabEchoCmd())
	return cmd
}

func newLabUpCmd(o *options, f *labFlags) *cobra.Command {
	var (
		file, agent, meshctl, format string
		controlplane, kubeAPIServer  string
		agentFlags                   []string
	)
	cmd := &cobra.Command{
		Use:   "up -f FILE",
		Short: "Build a lab from a topology file and leave it running",
		Long: `up validates the topology file, then creates the lab's namespaces, etcds,
agents and pods, writes its services to etcd, and returns when every agent
has them all. It prints the pods and services; progress goes to stderr.
On failure it removes what it made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if file == "" {
				return errors.New("name the topology file with -f (see docs/lab.md)")
			}
			t, err := lab.LoadTopology(file)
			if err != nil {
				return err
			}
			opts := f.options(o)
			opts.Agent, opts.Meshctl, opts.AgentFlags = agent, meshctl, agentFlags
			opts.ControlPlane, opts.KubeAPIServer = controlplane, kubeAPIServer
			l, err := lab.Up(cmd.Context(), t, opts)
			if err != nil {
				return err
			}
			return printLab(o.stdout, l, format)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "topology file (YAML)")
	cmd.Flags().StringVar(&agent, "agent", "", "mesh-agent binary (default: beside meshctl)")
	cmd.Flags().StringVar(&controlplane, "controlplane", "", "mesh-controlplane binary, for clusters with kubernetes: true (default: beside meshctl)")
	cmd.Flags().StringVar(&kubeAPIServer, "kube-apiserver", "", "kube-apiserver binary, for clusters with kubernetes: true (default: the one make kube-apiserver builds)")
	cmd.Flags().StringArrayVar(&agentFlags, "agent-flag", nil, "an extra mesh-agent flag for every agent, like --agent-flag=--log-level=debug (repeatable)")
	// Tests run lab up inside a test binary, which cannot be the lab's
	// helper: they name a meshctl binary.
	cmd.Flags().StringVar(&meshctl, "meshctl", "", "meshctl binary for the lab's helpers (default: this one)")
	_ = cmd.Flags().MarkHidden("meshctl")
	addOutputFlag(cmd, &format)
	return cmd
}

func newLabDownCmd(o *options, f *labFlags) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "down [NAME | -f FILE]",
		Short: "Remove a lab: processes, namespaces, pins, run directory",
		Long: `down removes everything a lab made, even after a crash of meshctl or of any
of the lab's processes. Removing a lab that is not there is not an error.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := f.name
			switch {
			case len(args) == 1:
				name = args[0]
			case file != "":
				t, err := lab.LoadTopology(file)
				if err != nil {
					return err
				}
				name = t.Name
			}
			if name == "" {
				return errors.New("name the lab: meshctl lab down NAME, or -f FILE")
			}
			if err := lab.Down(cmd.Context(), name, f.options(o)); err != nil {
				return err
			}
			fmt.Fprintf(o.stderr, "lab %s is down\n", name)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the topology file the lab was made from")
	cmd.Flags().StringVar(&f.name, "lab", "", "the lab's name")
	return cmd
}

func newLabShowCmd(o *options, f *labFlags) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "show [NAME]",
		Short: "Show a lab's nodes, pods and services",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if len(args) == 1 {
				f.name = args[0]
			}
			l, err := f.resolve(o)
			if err != nil {
				return err
			}
			return printLab(o.stdout, l, format)
		},
	}
	addOutputFlag(cmd, &format)
	return cmd
}

// printLab prints a lab's nodes, pods and services.
func printLab(w io.Writer, l *lab.Lab, format string) error {
	type cluster struct {
		Name          string   `json:"name"`
		EtcdEndpoints []string `json:"etcdEndpoints"`
		// Kubeconfig is the API server's admin kubeconfig, for a
		// cluster with kubernetes: true.
		Kubeconfig string `json:"kubeconfig,omitempty"`
	}
	var clusters []cluster
	onKube := false
	for _, c := range l.Topology().Clusters {
		kc, _ := l.Kubeconfig(c.Name)
		onKube = onKube || kc != ""
		clusters = append(clusters, cluster{c.Name, l.EtcdEndpoints(c.Name), kc})
	}
	if format == formatJSON {
		return writeJSON(w, struct {
			Name      string         `json:"name"`
			Clusters  []cluster      `json:"clusters"`
			Nodes     []lab.Node     `json:"nodes"`
			Pods      []lab.Pod      `json:"pods"`
			Services  []lab.Service  `json:"services"`
			Externals []lab.External `json:"externals"`
		}{l.Name(), clusters, l.Nodes(), l.Pods(), l.Services(), l.Externals()})
	}
	t := newTable(w, "CLUSTER", "ETCD (for meshctl: --etcd-endpoints E --cluster-name C)")
	for _, c := range clusters {
		t.row(c.Name, strings.Join(c.EtcdEndpoints, ","))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if onKube {
		fmt.Fprintln(w)
		t = newTable(w, "CLUSTER", "KUBECONFIG (for kubectl --kubeconfig K)")
		for _, c := range clusters {
			if c.Kubeconfig != "" {
				t.row(c.Name, c.Kubeconfig)
			}
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	t = newTable(w, "CLUSTER", "NODE", "IP", "POD CIDR", "AGENT SOCKET")
	for _, n := range l.Nodes() {
		t.row(n.Cluster, n.Name, n.IP.String(), n.PodCIDR.String(), n.AgentSocket)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "CLUSTER", "NODE", "POD", "IP", "IDENTITY")
	for _, p := range l.Pods() {
		t.row(p.Cluster, p.Node, p.Namespace+"/"+p.Name, p.IP.String(), strconv.FormatUint(uint64(p.Identity), 10))
	}
	if err := t.flush(); err != nil {
		return err
	}
	svcs := l.Services()
	if len(svcs) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable(w, "CLUSTER", "SERVICE", "CLUSTER IP", "PORTS", "BACKENDS")
	for _, s := range svcs {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d->%d/%s", p.Port, p.TargetPort, p.Protocol))
		}
		t.row(s.Cluster, s.Namespace+"/"+s.Name, s.ClusterIP.String(), strings.Join(ports, ","), orNone(s.Backends))
	}
	if err := t.flush(); err != nil {
		return err
	}
	exts := l.Externals()
	if len(exts) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable(w, "EXTERNAL", "IP", "PORTS")
	for _, x := range exts {
		var ports []string
		for _, p := range x.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
		t.row(x.Ref(), x.IP.String(), strings.Join(ports, ","))
	}
	return t.flush()
}

func newLabExecCmd(o *options, f *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec POD -- COMMAND [ARG...]",
		Short: "Run a command inside a pod's network namespace",
		Long: `exec runs a command in a pod's network namespace (only the network
namespace: files and bpffs are the host's). POD is namespace/name, name
when it is unique, or cluster/namespace/name.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 || len(args) < 2 {
				return errors.New("usage: meshctl lab exec POD -- COMMAND [ARG...]")
			}
			l, err := f.resolve(o)
			if err != nil {
				return err
			}
			p, err := l.Pod(args[0])
			if err != nil {
				return err
			}
			return l.ExecStdin(cmd.Context(), p, args[1:], cmd.InOrStdin(), o.stdout, o.stderr)
		},
	}
	cmd.Flags().StringVar(&f.name, "lab", "", "the lab (default: the only one running)")
	return cmd
}

func newLabLabelCmd(o *options, f *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "label",
		Short: "Change a pod's or a namespace's labels, as kubectl label does",
		Long: `label changes the labels of a running pod or of a namespace, as kubectl label
does on Kubernetes: the lab writes the pod's (pods/<node>/<namespace>/<name>)
or the namespace's (namespaces/<namespace>) metadata into the cluster's etcd,
where the control plane would, and waits until the agents have given the
pods the identities of their new label sets. The pods keep running; the
policies follow. key=value sets a label, key- removes it.

  meshctl lab label pod prod/client app=client
  meshctl lab label namespace prod env=staging team-`,
	}
	pods := &cobra.Command{
		Use:   "pod POD KEY=VALUE|KEY- ...",
		Short: "Change a running pod's labels",
		Long:  "POD is namespace/name, name when it is unique, or cluster/namespace/name.",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ch, err := lab.ParseLabelChange(args[1:])
			if err != nil {
				return err
			}
			l, err := f.resolve(o)
			if err != nil {
				return err
			}
			p, err := l.LabelPod(cmd.Context(), args[0], ch)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(o.stdout, "pod %s labelled: identity %d\n", p.Ref(), p.Identity)
			return err
		},
	}
	namespaces := &cobra.Command{
		Use:   "namespace NAMESPACE KEY=VALUE|KEY- ...",
		Short: "Change a namespace's labels (and so its pods' identities)",
		Long:  "NAMESPACE is a namespace of the topology, or cluster/namespace when several clusters have it.",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ch, err := lab.ParseLabelChange(args[1:])
			if err != nil {
				return err
			}
			l, err := f.resolve(o)
			if err != nil {
				return err
			}
			if err := l.LabelNamespace(cmd.Context(), args[0], ch); err != nil {
				return err
			}
			_, err = fmt.Fprintf(o.stdout, "namespace %s labelled\n", args[0])
			return err
		},
	}
	for _, c := range []*cobra.Command{pods, namespaces} {
		c.Flags().StringVar(&f.name, "lab", "", "the lab (default: the only one running)")
	}
	cmd.AddCommand(pods, namespaces)
	return cmd
}

func newLabProbeCmd(o *options, f *labFlags) *cobra.Command {
	var (
		spec   lab.ProbeSpec
		port   int
		format string
		expect string
	)
	cmd := &cobra.Command{
		Use:   "probe --from POD --to POD|IP|NAMESPACE/SERVICE [--port N]",
		Short: "Try a connection from a pod and say whether it was allowed",
		Long: `probe connects from inside the source pod's namespace to a pod, an address
or a service, and reports "allowed" (TCP: connected and the echo server
answered; UDP: a reply came back) with the pod that answered, or "denied"
with the drop reason from the flow logs of the source's and destination's
agents ("no flow recorded" if they have none). With --expect, a result
other than the expected one is an error (exit status 1).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if spec.From == "" || spec.To == "" {
				return errors.New("give --from and --to")
			}
			if port < 0 || port > 65535 {
				return fmt.Errorf("--port %d: use 1-65535", port)
			}
			switch expect {
			case "", "allowed", "denied":
			default:
				return fmt.Errorf("--expect %q: use allowed or denied", expect)
			}
			spec.Port = uint16(port)
			l, err := f.resolve(o)
			if err != nil {
				return err
			}
			res, err := l.Probe(cmd.Context(), spec)
			if err != nil {
				return err
			}
			if format == formatJSON {
				if err := writeJSON(o.stdout, res); err != nil {
					return err
				}
			} else {
				printProbe(o.stdout, res)
			}
			if expect != "" && res.Allowed != (expect == "allowed") {
				return fmt.Errorf("probe %s -> %s: expected %s", res.From, spec.To, expect)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&spec.From, "from", "", "source: pod, or external host (ext:NAME)")
	cmd.Flags().StringVar(&spec.To, "to", "", "target: pod, external host, IP address, or namespace/service (pod:, ext: or svc: to tell them apart)")
	cmd.Flags().IntVar(&port, "port", 0, "target port (default: the target's only port)")
	cmd.Flags().StringVar(&spec.Proto, "proto", "tcp", "tcp or udp")
	cmd.Flags().DurationVar(&spec.Timeout, "timeout", time.Second, "how long to wait for an answer")
	cmd.Flags().StringVar(&expect, "expect", "", "allowed or denied: fail if the result differs")
	cmd.Flags().StringVar(&f.name, "lab", "", "the lab (default: the only one running)")
	addOutputFlag(cmd, &format)
	return cmd
}

func printProbe(w io.Writer, r lab.ProbeResult) {
	what := fmt.Sprintf("%s -> %s (%s/%s)", r.From, r.To, r.Target, r.Proto)
	if r.Allowed {
		fmt.Fprintf(w, "allowed  %s: answered by %s in %s\n", what, r.Answered, r.Latency.Round(time.Microsecond))
		return
	}
	where := ""
	if r.DropNode != "" {
		where = fmt.Sprintf(" (dropped on %s, %s)", r.DropNode, r.DropDirection)
	}
	fmt.Fprintf(w, "denied   %s: %s%s; client saw: %s\n", what, r.Reason, where, r.Error)
}

// The helpers below are how the lab runs its processes; they are hidden.

func newLabNsexecCmd() *cobra.Command {
	var netns string
	cmd := &cobra.Command{
		Use:    "nsexec --netns PATH -- PROGRAM [ARG...]",
		Short:  "Run a program in a network namespace (the lab's helper)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if netns == "" || cmd.ArgsLenAtDash() != 0 || len(args) == 0 {
				return errors.New("usage: meshctl lab nsexec --netns PATH -- PROGRAM [ARG...]")
			}
			return lab.Nsexec(netns, args)
		},
	}
	cmd.Flags().StringVar(&netns, "netns", "", "network namespace file (/run/netns/NAME)")
	return cmd
}

func newLabEtcdCmd(o *options) *cobra.Command {
	var cfg lab.EtcdConfig
	cmd := &cobra.Command{
		Use:    "etcd --dir DIR --socket PATH [--upstream URL,...]",
		Short:  "Serve a cluster's etcd on a unix socket (the lab's helper)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Ready = o.stderr
			return lab.ServeEtcd(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Dir, "dir", "", "data directory of the embedded etcd")
	cmd.Flags().StringVar(&cfg.Socket, "socket", "", "unix socket to serve")
	cmd.Flags().StringSliceVar(&cfg.Upstream, "upstream", nil, "an external etcd's client URLs, instead of an embedded one")
	return cmd
}

func newLabEchoCmd() *cobra.Command {
	var (
		cfg      lab.EchoConfig
		tcp, udp []uint
	)
	cmd := &cobra.Command{
		Use:    "echo --name NAME [--tcp PORTS] [--udp PORTS]",
		Short:  "Serve a pod's ports: answer with the pod's name, echo the rest (the lab's helper)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, ps := range []struct {
				in  []uint
				out *[]uint16
			}{{tcp, &cfg.TCP}, {udp, &cfg.UDP}} {
				for _, p := range ps.in {
					if p < 1 || p > 65535 {
						return fmt.Errorf("port %d: use 1-65535", p)
					}
					*ps.out = append(*ps.out, uint16(p))
				}
			}
			return lab.Echo(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Name, "name", "", "what to answer with: cluster/namespace/pod")
	cmd.Flags().UintSliceVar(&tcp, "tcp", nil, "TCP ports")
	cmd.Flags().UintSliceVar(&udp, "udp", nil, "UDP ports")
	cmd.Flags().StringVar(&cfg.ReadyFile, "ready-file", "", "file to create once every port listens")
	return cmd
}
