package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// maxErrors bounds the problems one Parse, Decode or Validate reports, so a
// file of garbage gives a readable answer.
const maxErrors = 20

// problems collects field errors of one document.
type problems struct {
	list []*FieldError
}

func (ps *problems) add(field, format string, args ...any) {
	ps.list = append(ps.list, &FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
}

// locate fills in where the problems were found.
func (ps *problems) locate(policy string, document int, item string) {
	for _, e := range ps.list {
		e.Policy, e.Document, e.Item = policy, document, item
	}
}

// join returns the problems as one error (nil for none), at most
// maxErrors of them.
func joinProblems(list []*FieldError) error {
	if len(list) == 0 {
		return nil
	}
	errs := make([]error, 0, min(len(list), maxErrors)+1)
	for i, e := range list {
		if i == maxErrors {
			errs = append(errs, fmt.Errorf("%w: %d more problems not shown; fix the ones above first", ErrInvalid, len(list)-maxErrors))
			break
		}
		errs = append(errs, e)
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// displayKey names a policy in errors: its key with the default namespace,
// or nothing when it has no name.
func displayKey(p *Policy) string {
	if p.Name == "" {
		return ""
	}
	ns := p.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	return ns + "/" + p.Name
}

func field(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// Validate checks the policy as Kubernetes' API server would, plus the
// MeshNetworkPolicy rules. An empty Namespace, empty PolicyTypes and empty
// port protocols are valid: they mean the defaults (DefaultNamespace,
// Kubernetes' policyTypes rule, TCP). Every error wraps ErrInvalid; several
// are joined with errors.Join, each a *FieldError.
func (p *Policy) Validate() error {
	var ps problems
	p.validate(&ps)
	ps.locate(displayKey(p), 0, "")
	return joinProblems(ps.list)
}

func (p *Policy) validate(ps *problems) {
	switch p.Kind {
	case KindNetworkPolicy, KindMeshNetworkPolicy:
	default:
		ps.add("kind", "%q is not a policy kind; use %s (apiVersion %s) or %s (apiVersion %s)",
			p.Kind, KindNetworkPolicy, APIVersionNetworkPolicy, KindMeshNetworkPolicy, APIVersionMeshNetworkPolicy)
	}
	if p.Name == "" {
		ps.add("metadata.name", "missing; name the policy, e.g. allow-web")
	} else if why := checkDNSSubdomain(p.Name); why != "" {
		ps.add("metadata.name", "%q %s", p.Name, why)
	}
	if p.Namespace != "" {
		if why := checkDNSLabel(p.Namespace); why != "" {
			ps.add("metadata.namespace", "%q %s", p.Namespace, why)
		}
	}
	mesh := p.Kind == KindMeshNetworkPolicy
	s := &p.Spec
	validateSelector(ps, "spec.podSelector", &s.PodSelector)
	for i, t := range s.PolicyTypes {
		path := index("spec.policyTypes", i)
		switch t {
		case TypeIngress, TypeEgress:
			if slices.Index(s.PolicyTypes, t) < i {
				ps.add(path, "%s is listed twice; remove one", t)
			}
		default:
			ps.add(path, "%q is not a policy type; use Ingress or Egress (capitalised)", t)
		}
	}
	for i, r := range s.Ingress {
		path := index("spec.ingress", i)
		validatePorts(ps, field(path, "ports"), r.Ports)
		validatePeers(ps, field(path, "from"), r.From, mesh)
	}
	for i, r := range s.Egress {
		path := index("spec.egress", i)
		validatePorts(ps, field(path, "ports"), r.Ports)
		validatePeers(ps, field(path, "to"), r.To, mesh)
	}
	p.validateLimits(ps)
}

func validatePorts(ps *problems, path string, ports []Port) {
	for i, p := range ports {
		path := index(path, i)
		switch p.Protocol {
		case "", ProtocolTCP, ProtocolUDP, ProtocolSCTP:
		default:
			ps.add(field(path, "protocol"), "%q is not supported; use TCP, UDP or SCTP (upper case), or leave it out for TCP", p.Protocol)
		}
		if p.Port != nil {
			validatePortValue(ps, field(path, "port"), *p.Port)
		}
		if p.EndPort == nil {
			continue
		}
		end := *p.EndPort
		switch {
		case p.Port == nil:
			ps.add(field(path, "endPort"), "needs port: set port to the first port of the range")
		case p.Port.Name != "":
			ps.add(field(path, "endPort"), "needs a numeric port, but port is the named port %q; use a number or drop endPort", p.Port.Name)
		case end < 1 || end > 65535:
			ps.add(field(path, "endPort"), "%d is not a port; use 1-65535", end)
		case end < p.Port.Number:
			ps.add(field(path, "endPort"), "%d is less than port %d; endPort is the last port of the range, so it must be at least port", end, p.Port.Number)
		}
	}
}

func validatePortValue(ps *problems, path string, v PortValue) {
	switch {
	case v.Name != "" && v.Number != 0:
		ps.add(path, "has both the number %d and the name %q; set one", v.Number, v.Name)
	case v.Name != "":
		if why := checkPortName(v.Name); why != "" {
			ps.add(path, "%s", why)
		}
	case v.Number < 1 || v.Number > 65535:
		ps.add(path, "%d is not a port; use 1-65535, a port name, or leave port out for every port", v.Number)
	}
}

// checkPortName checks Kubernetes' IANA_SVC_NAME rule for named ports.
func checkPortName(s string) string {
	const rule = "a port name is 1-15 characters of a-z, 0-9 and '-', with at least one letter, no '--', and no '-' at either end"
	if n, err := strconv.Atoi(s); err == nil {
		return fmt.Sprintf("%q is a number written as a string; write port: %d without quotes", s, n)
	}
	if len(s) > 15 {
		return fmt.Sprintf("port name %q is %d characters long; %s", s, len(s), rule)
	}
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return fmt.Sprintf("port name %q contains %q; %s", s, c, rule)
		}
	}
	if !letter || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return fmt.Sprintf("port name %q is malformed; %s", s, rule)
	}
	return ""
}

func validatePeers(ps *problems, path string, peers []Peer, mesh bool) {
	for i, p := range peers {
		path := index(path, i)
		hasSel := p.PodSelector != nil || p.NamespaceSelector != nil
		switch {
		case p.IPBlock == nil && !hasSel:
			ps.add(path, "empty peer; set podSelector, namespaceSelector or ipBlock (to allow everything, leave the whole from/to list out)")
		case p.IPBlock != nil && hasSel:
			ps.add(path, "ipBlock cannot be combined with podSelector or namespaceSelector; write them as separate peers")
		}
		if p.PodSelector != nil {
			validateSelector(ps, field(path, "podSelector"), p.PodSelector)
		}
		if p.NamespaceSelector != nil {
			validateSelector(ps, field(path, "namespaceSelector"), p.NamespaceSelector)
		}
		if p.IPBlock != nil {
			validateIPBlock(ps, field(path, "ipBlock"), p.IPBlock)
		}
		if len(p.Clusters) > 0 {
			validateClusters(ps, field(path, "clusters"), p, mesh)
		}
	}
}

func validateClusters(ps *problems, path string, p Peer, mesh bool) {
	switch {
	case !mesh:
		ps.add(path, "clusters is a MeshNetworkPolicy field; use apiVersion %s and kind %s, or remove it (a NetworkPolicy matches the local cluster)",
			APIVersionMeshNetworkPolicy, KindMeshNetworkPolicy)
		return
	case p.PodSelector == nil && p.NamespaceSelector == nil:
		ps.add(path, "applies to podSelector and namespaceSelector only; remove it from an ipBlock peer")
		return
	}
	for i, c := range p.Clusters {
		switch {
		case c == ClustersAll:
			if len(p.Clusters) > 1 {
				ps.add(index(path, i), "%q already means every cluster; remove the other names", ClustersAll)
			}
		case !clusterNameRE.MatchString(c):
			ps.add(index(path, i), "%q is not a cluster name; use 1-32 lowercase letters, digits and '-', starting and ending with a letter or digit, or %q for every cluster", c, ClustersAll)
		case slices.Index(p.Clusters, c) < i:
			ps.add(index(path, i), "%q is listed twice; remove one", c)
		}
	}
}

// clusterNameRE is kvstore's cluster name rule (kvstore.ValidateClusterName),
// repeated here because this package stays free of I/O packages.
var clusterNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$`)

func validateIPBlock(ps *problems, path string, b *IPBlock) {
	cidr, ok := parseCIDR(ps, field(path, "cidr"), b.CIDR)
	for i, s := range b.Except {
		path := index(field(path, "except"), i)
		ex, exOK := parseCIDR(ps, path, s)
		if !ok || !exOK {
			continue
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			ps.add(path, "%s is not inside cidr %s; an except must be a strictly smaller block inside cidr", s, b.CIDR)
		}
	}
}

func parseCIDR(ps *problems, path, s string) (netip.Prefix, bool) {
	if s == "" {
		ps.add(path, "missing; write a CIDR such as 10.0.0.0/8 (0.0.0.0/0 for every IPv4 address)")
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		ps.add(path, "%q is not a CIDR; write an address and a prefix length, e.g. 10.0.0.0/8 or 2001:db8::/32", s)
		return netip.Prefix{}, false
	}
	if p.Addr().Is4In6() {
		ps.add(path, "%s is an IPv4-mapped IPv6 block; write the IPv4 block (e.g. 10.0.0.0/8) instead", s)
		return netip.Prefix{}, false
	}
	if m := p.Masked(); m != p {
		ps.add(path, "%s has host bits set; write the network address: %s", s, m)
		return netip.Prefix{}, false
	}
	return p, true
}

func validateSelector(ps *problems, path string, sel *LabelSelector) {
	keys := make([]string, 0, len(sel.MatchLabels))
	for k := range sel.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if why := checkLabelKey(k); why != "" {
			ps.add(field(path, "matchLabels"), "%s", why)
		}
		if why := checkLabelValue(sel.MatchLabels[k]); why != "" {
			ps.add(field(path, "matchLabels"), "key %q: %s", k, why)
		}
	}
	for i, r := range sel.MatchExpressions {
		path := index(field(path, "matchExpressions"), i)
		if why := checkLabelKey(r.Key); why != "" {
			ps.add(field(path, "key"), "%s", why)
		}
		switch r.Operator {
		case OpIn, OpNotIn:
			if len(r.Values) == 0 {
				ps.add(field(path, "values"), "%s needs at least one value", r.Operator)
			}
		case OpExists, OpDoesNotExist:
			if len(r.Values) > 0 {
				ps.add(field(path, "values"), "%s takes no values; remove them, or use In/NotIn", r.Operator)
			}
		case "":
			ps.add(field(path, "operator"), "missing; use In, NotIn, Exists or DoesNotExist")
		default:
			ps.add(field(path, "operator"), "%q is not an operator; use In, NotIn, Exists or DoesNotExist", r.Operator)
		}
		for j, v := range r.Values {
			if why := checkLabelValue(v); why != "" {
				ps.add(index(field(path, "values"), j), "%s", why)
			}
		}
	}
}

// checkLabelKey checks a Kubernetes label key: [<DNS subdomain>/]<name>.
func checkLabelKey(k string) string {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		return checkLabelName("key", k)
	}
	if strings.Contains(name, "/") {
		return fmt.Sprintf("key %q has more than one '/'; a label key is [<prefix>/]<name>, e.g. app.kubernetes.io/name", k)
	}
	if why := checkDNSSubdomain(prefix); why != "" {
		return fmt.Sprintf("key %q: prefix %q %s", k, prefix, why)
	}
	return checkLabelName("key name", name)
}

// checkLabelValue checks a Kubernetes label value (empty is allowed).
func checkLabelValue(v string) string {
	if v == "" {
		return ""
	}
	return checkLabelName("value", v)
}

func checkLabelName(what, s string) string {
	const rule = "1-63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
	if s == "" {
		return fmt.Sprintf("%s is empty; it must be %s", what, rule)
	}
	if len(s) > 63 {
		return fmt.Sprintf("%s %q is %d characters long; it must be %s", what, s, len(s), rule)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Sprintf("%s %q contains %q; it must be %s", what, s, c, rule)
		}
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return fmt.Sprintf("%s %q must start and end with a letter or digit", what, s)
	}
	return ""
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// checkDNSLabel checks an RFC 1123 label, as Kubernetes names namespaces.
func checkDNSLabel(s string) string {
	const rule = "must be 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
	if len(s) > 63 || !isDNSLabel(s) {
		return rule
	}
	return ""
}

// checkDNSSubdomain checks an RFC 1123 subdomain, as Kubernetes names most
// objects and label key prefixes.
func checkDNSSubdomain(s string) string {
	const rule = "must be at most 253 characters of dot-separated parts of lowercase letters, digits and '-', each starting and ending with a letter or digit"
	if s == "" || len(s) > 253 {
		return rule
	}
	for part := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(part) {
			return rule
		}
	}
	return ""
}

func isDNSLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
