package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/policy"
)

// maxApplyBytes bounds the keys and values one apply writes: etcd refuses
// a request over its --max-request-bytes (1.5 MiB by default) with a bare
// "request is too large", so apply refuses first, with room to spare.
const maxApplyBytes = 1 << 20

func newPolicyCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Apply, list, show and delete network policies",
		Long: `Network policies are Kubernetes NetworkPolicy (networking.k8s.io/v1) and
meshplane's MeshNetworkPolicy (meshplane.io/v1alpha1), which adds to each peer
a clusters list naming the mesh clusters it matches. They are stored in the
cluster's etcd under policies/<namespace>/<name>, where every agent watches
them.`,
	}
	cmd.AddCommand(newPolicyApplyCmd(o), newPolicyListCmd(o), newPolicyGetCmd(o), newPolicyDeleteCmd(o))
	return cmd
}

func newPolicyApplyCmd(o *options) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace the policies of a YAML file",
		Long: `apply reads one or more YAML documents (separated by "---"), each a
NetworkPolicy, a MeshNetworkPolicy or a List of them, and writes them all in
one etcd transaction, replacing policies of the same namespace and name.
Every document is checked first: if any is invalid, nothing is written. At
most 128 policies, 1 MiB of input and 1 MiB as stored go in one apply.`,
		Example: `  meshctl policy apply -f allow-web.yaml
  kubectl get networkpolicy -A -o yaml | meshctl policy apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := readInput(cmd, file)
			if err != nil {
				return err
			}
			ps, err := policy.Parse(data)
			if err != nil {
				return fmt.Errorf("%s: nothing applied: %w", inputName(file), err)
			}
			if len(ps) > kvstore.MaxTxnOps {
				return fmt.Errorf("%s: nothing applied: %d policies is more than the %d one apply writes atomically; split the file",
					inputName(file), len(ps), kvstore.MaxTxnOps)
			}
			if err := o.applyPolicies(cmd.Context(), ps); err != nil {
				if errors.Is(err, errApplyTooLarge) {
					return fmt.Errorf("%s: nothing applied: %w", inputName(file), err)
				}
				return err
			}
			for _, p := range ps {
				fmt.Fprintf(o.stdout, "policy %s configured\n", p.Key())
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", `YAML file of policies, or "-" for standard input (required)`)
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

// readInput reads a file, or standard input for "-": at most one byte
// more than policy.MaxInputBytes, so that an oversized input is refused by
// Parse without being held in memory whole.
func readInput(cmd *cobra.Command, file string) ([]byte, error) {
	r := cmd.InOrStdin()
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("-f: %w", err)
		}
		defer func() { _ = f.Close() }()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, policy.MaxInputBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", inputName(file), err)
	}
	return data, nil
}

func inputName(file string) string {
	if file == "-" {
		return "standard input"
	}
	return file
}

// errApplyTooLarge is wrapped when the policies of one apply do not fit
// one transaction.
var errApplyTooLarge = errors.New("policies too large for one apply")

// applyPolicies writes the policies in one transaction: all or nothing.
func (o *options) applyPolicies(ctx context.Context, ps []*policy.Policy) (err error) {
	keys := o.keys()
	size := 0
	for _, p := range ps {
		b, err := p.Encode()
		if err != nil {
			return err
		}
		size += len(keys.Policy(p.Namespace, p.Name)) + len(b)
	}
	if size > maxApplyBytes {
		return fmt.Errorf("%w: the %d policies are %d bytes as stored; at most %d bytes go in one apply (one etcd transaction): split the file",
			errApplyTooLarge, len(ps), size, maxApplyBytes)
	}
	client, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer closeClient(client, &err)
	if err := refuseOwnedPolicies(ctx, client, keys); err != nil {
		return err
	}
	return kvstore.PolicyStore(client, keys).PutAll(ctx, ps)
}

// errPoliciesOwned is wrapped when a control plane owns policies/.
var errPoliciesOwned = errors.New("policies are owned by the control plane")

// refuseOwnedPolicies refuses a write to policies/ while a mesh-controlplane
// leads that writes them from Kubernetes: its next resync would delete
// what meshctl wrote (or overwrite what it deleted).
func refuseOwnedPolicies(ctx context.Context, client *kvstore.Client, keys kvstore.Keys) error {
	leader, err := controlplane.Leader(ctx, client, keys)
	if errors.Is(err, kvstore.ErrNoLeader) {
		return nil
	}
	if err != nil {
		return err
	}
	if !leader.OwnsPolicies() {
		return nil
	}
	return fmt.Errorf("%w: mesh-controlplane %q leads cluster %s and writes policies/ from the Kubernetes NetworkPolicies and MeshNetworkPolicies (its resync deletes any other policy): change the policy in Kubernetes instead (kubectl apply -f / kubectl delete)",
		errPoliciesOwned, leader.Name, keys.Cluster())
}

// policyInfo is one stored policy as list prints it.
type policyInfo struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Kind      string `json:"kind,omitempty"`
	// Selector is spec.podSelector in kubectl's form; "" selects every
	// pod of the namespace.
	Selector string `json:"selector"`
	// IngressRules and EgressRules count the rules of each direction the
	// policy enforces; null when it does not enforce that direction.
	IngressRules *int `json:"ingressRules"`
	EgressRules  *int `json:"egressRules"`
	// Error says why the stored value is not a valid policy.
	Error string `json:"error,omitempty"`

	// With --agent: Revision is the key's mod revision; EnforcedBy the
	// nodes whose enforced policy revision is at or above it (for an
	// invalid value: the nodes that have seen it, which keep the last
	// good version or deny the namespace), Pending the others.
	Revision   int64    `json:"revision,omitempty"`
	EnforcedBy []string `json:"enforcedBy,omitempty"`
	Pending    []string `json:"pending,omitempty"`
}

// nodePolicyInfo is one node's enforced policy revision, as list --agent
// prints it.
type nodePolicyInfo struct {
	Node string `json:"node"`
	// PolicyRevision is the etcd revision up to which the node's agent
	// enforces the policies (0: not known: the agent is not synced yet,
	// or too old to publish it).
	PolicyRevision int64 `json:"policyRevision"`
	// Behind lists the policies (namespace/name) newer than that.
	Behind []string `json:"behind,omitempty"`
	// Error says why the node record is invalid.
	Error string `json:"error,omitempty"`
}

// policyAgentReport is what list --agent -o json prints.
type policyAgentReport struct {
	Policies []policyInfo     `json:"policies"`
	Nodes    []nodePolicyInfo `json:"nodes"`
}

func newPolicyListCmd(o *options) *cobra.Command {
	var format, namespace string
	var agents bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the cluster's policies",
		Long: `list prints the policies of every namespace, or of --namespace. INGRESS-RULES
and EGRESS-RULES count the rules of each direction a policy enforces: 0 means
it denies everything in that direction, "-" that it leaves it alone. Stored
values that are not valid policies are listed with an ERROR column: agents
keep enforcing the last valid version of such a key, or, if they never saw
one, deny every pod of its namespace, until it is fixed or deleted.

With --agent, list also shows which nodes enforce each policy: every agent
publishes in its node record the etcd revision up to which its maps hold the
policies, and a policy is enforced by a node once that revision reaches the
policy's own (REVISION). A second table lists each node's revision and the
policies it does not enforce yet.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			infos, nodes, err := o.listPolicies(cmd.Context(), namespace, agents)
			if err != nil {
				return err
			}
			if format == formatJSON {
				if agents {
					return writeJSON(o.stdout, policyAgentReport{Policies: infos, Nodes: nodes})
				}
				return writeJSON(o.stdout, infos)
			}
			header := []string{"NAMESPACE", "NAME", "KIND", "SELECTOR", "INGRESS-RULES", "EGRESS-RULES"}
			if agents {
				header = append(header, "REVISION", "NODES")
			}
			bad := false
			for _, in := range infos {
				bad = bad || in.Error != ""
			}
			if bad {
				header = append(header, "ERROR")
			}
			t := newTable(o.stdout, header...)
			for _, in := range infos {
				row := []string{in.Namespace, in.Name, orDash(in.Kind), in.Selector, ruleCount(in.IngressRules), ruleCount(in.EgressRules)}
				switch {
				case in.Error != "":
					row[3] = "-"
				case in.Selector == "":
					row[3] = "<all>"
				}
				if agents {
					row = append(row, strconv.FormatInt(in.Revision, 10), enforcedCell(in, len(nodes)))
				}
				if bad {
					row = append(row, orDash(in.Error))
				}
				t.row(row...)
			}
			if err := t.flush(); err != nil || !agents {
				return err
			}
			fmt.Fprintln(o.stdout)
			t = newTable(o.stdout, "NODE", "POLICY-REVISION", "BEHIND")
			for _, n := range nodes {
				rev, behind := strconv.FormatInt(n.PolicyRevision, 10), strconv.Itoa(len(n.Behind))
				switch {
				case n.Error != "":
					rev, behind = "-", "unknown: invalid node record: "+n.Error
				case n.PolicyRevision == 0:
					rev, behind = "-", "unknown: the agent has not published its revision (starting, or older than this meshctl)"
				case len(n.Behind) > 0:
					behind += " (" + strings.Join(n.Behind, ", ") + ")"
				}
				t.row(n.Node, rev, behind)
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "list only this namespace's policies (default: every namespace)")
	cmd.Flags().BoolVar(&agents, "agent", false, "also show which nodes' agents enforce each policy (from the node records)")
	addOutputFlag(cmd, &format)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ruleCount(n *int) string {
	if n == nil {
		return "-"
	}
	return strconv.Itoa(*n)
}

// enforcedCell is the NODES cell of list --agent: how many of n nodes
// enforce the policy, and which do not yet.
func enforcedCell(in policyInfo, n int) string {
	cell := fmt.Sprintf("%d/%d", len(in.EnforcedBy), n)
	if in.Error != "" {
		cell = "invalid value seen by " + cell + " (they keep the last valid version, or deny the namespace)"
	}
	if len(in.Pending) > 0 {
		cell += " (pending: " + strings.Join(in.Pending, ", ") + ")"
	}
	return cell
}

// listPolicies reads the stored policies, sorted by key, and with agents
// the nodes' enforced revisions, setting each policy's Revision,
// EnforcedBy and Pending.
func (o *options) listPolicies(ctx context.Context, namespace string, agents bool) (_ []policyInfo, _ []nodePolicyInfo, err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer closeClient(client, &err)
	infos, revs, err := o.readPolicies(ctx, client, namespace)
	if err != nil || !agents {
		return infos, nil, err
	}
	nodes, err := o.readNodePolicyRevisions(ctx, client)
	if err != nil {
		return nil, nil, err
	}
	for i := range infos {
		infos[i].Revision = revs[i]
		for j, n := range nodes {
			if n.Error == "" && n.PolicyRevision >= revs[i] {
				infos[i].EnforcedBy = append(infos[i].EnforcedBy, n.Node)
				continue
			}
			infos[i].Pending = append(infos[i].Pending, n.Node)
			if n.Error == "" && n.PolicyRevision > 0 {
				nodes[j].Behind = append(nodes[j].Behind, infos[i].Namespace+"/"+infos[i].Name)
			}
		}
	}
	return infos, nodes, nil
}

// readNodePolicyRevisions reads every node record's enforced policy
// revision, sorted by node.
func (o *options) readNodePolicyRevisions(ctx context.Context, client *kvstore.Client) ([]nodePolicyInfo, error) {
	prefix := o.keys().NodesPrefix()
	kvs, _, err := client.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]nodePolicyInfo, 0, len(kvs))
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, prefix)
		r, err := node.Decode(name, kv.Value)
		if err != nil {
			out = append(out, nodePolicyInfo{Node: name, Error: strings.ReplaceAll(err.Error(), "\n", "; ")})
			continue
		}
		out = append(out, nodePolicyInfo{Node: name, PolicyRevision: r.PolicyRevision})
	}
	return out, nil
}

// readPolicies reads the stored policies, sorted by key, and their mod
// revisions.
func (o *options) readPolicies(ctx context.Context, client *kvstore.Client, namespace string) ([]policyInfo, []int64, error) {
	sub := ""
	if namespace != "" {
		sub = namespace + "/"
	}
	items, _, err := kvstore.PolicyStore(client, o.keys()).ListPrefix(ctx, sub)
	if err != nil {
		return nil, nil, err
	}
	out := make([]policyInfo, 0, len(items))
	revs := make([]int64, 0, len(items))
	for _, it := range items {
		revs = append(revs, it.ModRevision)
		ns, name, _ := strings.Cut(it.Key, "/")
		in := policyInfo{Namespace: ns, Name: name}
		if it.Err != nil {
			in.Error = strings.ReplaceAll(it.Err.Error(), "\n", "; ")
			out = append(out, in)
			continue
		}
		p := it.Value
		in.Kind, in.Selector = p.Kind, p.Spec.PodSelector.String()
		if p.Spec.Enforces(policy.TypeIngress) {
			n := len(p.Spec.Ingress)
			in.IngressRules = &n
		}
		if p.Spec.Enforces(policy.TypeEgress) {
			n := len(p.Spec.Egress)
			in.EgressRules = &n
		}
		out = append(out, in)
	}
	return out, revs, nil
}

// policyName resolves NAME or NAMESPACE/NAME and --namespace to a
// namespace and a name.
func policyName(arg, namespace string) (string, string, error) {
	ns, name, hasNS := strings.Cut(arg, "/")
	if !hasNS {
		ns, name = namespace, arg
		if ns == "" {
			ns = policy.DefaultNamespace
		}
	} else if namespace != "" && namespace != ns {
		return "", "", fmt.Errorf("%q names namespace %s but --namespace is %s; give one", arg, ns, namespace)
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%q: name a policy as NAME or NAMESPACE/NAME", arg)
	}
	return ns, name, nil
}

// Output formats of policy get.
const formatYAML = "yaml"

func newPolicyGetCmd(o *options) *cobra.Command {
	var format, namespace string
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Print a policy as a manifest that apply takes back",
		Example: `  meshctl policy get allow-web -n prod
  meshctl policy get prod/allow-web -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != formatYAML && format != formatJSON {
				return fmt.Errorf("-o %q: unknown output format; use yaml or json", format)
			}
			ns, name, err := policyName(args[0], namespace)
			if err != nil {
				return err
			}
			p, err := o.getPolicy(cmd.Context(), ns, name)
			if err != nil {
				return err
			}
			m, err := p.Manifest()
			if err != nil {
				return err
			}
			if format == formatYAML {
				_, err = o.stdout.Write(m)
				return err
			}
			j, err := yaml.YAMLToJSON(m)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := json.Indent(&buf, j, "", "  "); err != nil {
				return err
			}
			buf.WriteByte('\n')
			_, err = o.stdout.Write(buf.Bytes())
			return err
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", `the policy's namespace (default "default")`)
	cmd.Flags().StringVarP(&format, "output", "o", formatYAML, "output format: yaml or json")
	return cmd
}

func (o *options) getPolicy(ctx context.Context, ns, name string) (_ *policy.Policy, err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer closeClient(client, &err)
	it, ok, err := kvstore.PolicyStore(client, o.keys()).Get(ctx, ns+"/"+name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, o.policyNotFound(ns, name)
	}
	if it.Err != nil {
		return nil, fmt.Errorf("%w; the key %s is corrupt: apply the policy again or delete it", it.Err, o.keys().Policy(ns, name))
	}
	return it.Value, nil
}

func (o *options) policyNotFound(ns, name string) error {
	return fmt.Errorf("policy %s/%s %w in cluster %q; see 'meshctl policy list'", ns, name, ErrNotFound, o.clusterName)
}

func newPolicyDeleteCmd(o *options) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a policy",
		Long: `delete removes a policy, named NAME (in --namespace, default "default") or
NAMESPACE/NAME. A policy that does not exist is an error.`,
		Example: `  meshctl policy delete allow-web -n prod
  meshctl policy delete prod/allow-web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, err := policyName(args[0], namespace)
			if err != nil {
				return err
			}
			if err := o.deletePolicy(cmd.Context(), ns, name); err != nil {
				return err
			}
			fmt.Fprintf(o.stdout, "policy %s/%s deleted\n", ns, name)
			return nil
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", `the policy's namespace (default "default")`)
	return cmd
}

// deletePolicy deletes the key if it exists. It reads and then deletes the
// revision it read, so that "not found" is exact; a write in between makes
// it read again, a bounded number of times.
func (o *options) deletePolicy(ctx context.Context, ns, name string) (err error) {
	client, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer closeClient(client, &err)
	if err := refuseOwnedPolicies(ctx, client, o.keys()); err != nil {
		return err
	}
	store := kvstore.PolicyStore(client, o.keys())
	const attempts = 5
	for range attempts {
		it, ok, err := store.Get(ctx, ns+"/"+name)
		if err != nil {
			return err
		}
		if !ok {
			return o.policyNotFound(ns, name)
		}
		err = store.DeleteIf(ctx, it.Key, it.ModRevision)
		if !errors.Is(err, kvstore.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("delete policy %s/%s: it changed %d times while deleting; try again", ns, name, attempts)
}
