package cli

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/lab"
	"github.com/meshplane/meshplane/policy"
)

//go:embed demo_lab.yaml
var demoTopology []byte

// demoPolicy is the demo's sample policy: web pods take http from the
// client only; the tester in dev may only reach prod's admin port.
const demoPolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tester-egress, namespace: dev}
spec:
  podSelector: {matchLabels: {app: tester}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {env: prod}}}]
    ports: [{port: 9090}]
`

// demoProbe is one row of the demo's matrix.
type demoProbe struct {
	from, to string
	port     uint16
	proto    string
	note     string
}

var demoProbes = []demoProbe{
	{"prod/client", "prod/web-1", 80, "tcp", "same node"},
	{"prod/client", "prod/web-2", 80, "tcp", "across nodes"},
	{"prod/client", "svc:prod/web", 80, "tcp", "service"},
	{"prod/client", "svc:prod/web", 80, "tcp", "service"},
	{"prod/client", "svc:prod/web", 80, "tcp", "service"},
	{"prod/client", "svc:prod/web", 80, "tcp", "service"},
	{"prod/client", "prod/web-1", 9090, "tcp", "port not allowed"},
	{"prod/web-1", "prod/web-2", 53, "udp", "UDP, not allowed"},
	{"dev/tester", "prod/web-2", 80, "tcp", "egress not allowed"},
	{"dev/tester", "prod/web-1", 9090, "tcp", "egress ok, ingress not"},
	{"prod/client", "dev/tester", 8080, "tcp", "tester has no ingress policy"},
}

func (o *options) addLabDemo(cmd *cobra.Command) {
	var keep bool
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the lab running (remove it with: meshctl lab down meshplane-demo)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if os.Geteuid() != 0 {
			return errors.New("the demo builds network namespaces and loads eBPF programs: run it as root (sudo make demo); `meshctl demo identities` needs no privileges")
		}
		return runLabDemo(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), keep)
	}
}

func runLabDemo(ctx context.Context, out, progress io.Writer, keep bool) (err error) {
	topo, err := lab.ParseTopology(demoTopology)
	if err != nil {
		return err
	}
	opts := lab.Options{Stdout: progress}
	// A demo interrupted earlier may have left its lab behind.
	if err := lab.Down(ctx, topo.Name, opts); err != nil {
		return fmt.Errorf("remove an earlier demo lab: %w", err)
	}
	fmt.Fprintln(out, "Building the lab: one cluster (its own etcd), two nodes (network namespaces, one mesh-agent each), four pods, one service.")
	l, err := lab.Up(ctx, topo, opts)
	if err != nil {
		return err
	}
	if !keep {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if derr := lab.Down(dctx, topo.Name, opts); derr != nil {
				err = errors.Join(err, derr)
				return
			}
			fmt.Fprintln(out, "\nThe lab is down: namespaces, agents, etcd and pinned maps removed.")
		}()
	}
	tw := newTable(out, "POD", "NODE", "IP", "IDENTITY")
	for _, p := range l.Pods() {
		tw.row(p.Namespace+"/"+p.Name, p.Node, p.IP.String(), fmt.Sprint(p.Identity))
	}
	if err := tw.flush(); err != nil {
		return err
	}
	for _, s := range l.Services() {
		fmt.Fprintf(out, "service %s/%s: %s, backends %s\n", s.Namespace, s.Name, s.ClusterIP, strings.Join(s.Backends, ", "))
	}

	before, err := demoMatrix(ctx, l)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nApplying the sample policy (as `meshctl policy apply -f` does):\n\n%s\n", demoPolicy)
	if err := demoApply(ctx, l, topo.Clusters[0].Name); err != nil {
		return err
	}
	after, err := demoMatrixSettled(ctx, l, before)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "Probes: real TCP and UDP connections from inside the pods' namespaces, before and after the policy.")
	tw = newTable(out, "FROM", "TO", "", "BEFORE", "AFTER", "DETAIL")
	for i, p := range demoProbes {
		tw.row(p.from, fmt.Sprintf("%s:%d/%s", strings.TrimPrefix(p.to, "svc:"), p.port, p.proto), p.note,
			verdict(before[i]), verdict(after[i]), detail(after[i]))
	}
	return tw.flush()
}

func verdict(r lab.ProbeResult) string {
	if r.Allowed {
		return "allowed"
	}
	return "DENIED"
}

func detail(r lab.ProbeResult) string {
	if r.Allowed {
		return "answered by " + r.Answered
	}
	s := r.Reason
	if r.DropNode != "" {
		s += fmt.Sprintf(" (%s, %s)", r.DropNode, r.DropDirection)
	}
	return s
}

func demoMatrix(ctx context.Context, l *lab.Lab) ([]lab.ProbeResult, error) {
	out := make([]lab.ProbeResult, len(demoProbes))
	for i, p := range demoProbes {
		r, err := l.Probe(ctx, lab.ProbeSpec{From: p.from, To: p.to, Port: p.port, Proto: p.proto, Timeout: 500 * time.Millisecond})
		if err != nil {
			return nil, fmt.Errorf("probe %s -> %s:%d: %w", p.from, p.to, p.port, err)
		}
		out[i] = r
	}
	return out, nil
}

// demoMatrixSettled probes until two rounds in a row agree: the policy
// reaches the agents through etcd within milliseconds, but a probe that
// started before it may still pass.
func demoMatrixSettled(ctx context.Context, l *lab.Lab, before []lab.ProbeResult) ([]lab.ProbeResult, error) {
	prev := before
	for range 5 {
		cur, err := demoMatrix(ctx, l)
		if err != nil {
			return nil, err
		}
		same := true
		for i := range cur {
			same = same && cur[i].Allowed == prev[i].Allowed
		}
		if same {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

func demoApply(ctx context.Context, l *lab.Lab, cluster string) error {
	ps, err := policy.Parse([]byte(demoPolicy))
	if err != nil {
		return err
	}
	client, err := kvstore.New(ctx, kvstore.Config{Endpoints: l.EtcdEndpoints(cluster)})
	if err != nil {
		return err
	}
	defer func() { _ = client.Close() }()
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		return err
	}
	return kvstore.PolicyStore(client, keys).PutAll(ctx, ps)
}
