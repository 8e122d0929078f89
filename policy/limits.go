package policy

import "fmt"

// Limits on policies. Kubernetes bounds a NetworkPolicy only by its object
// size (etcd's default request limit, 1.5 MiB), but every agent expands
// each policy into policy map entries for every endpoint it selects, so
// meshplane bounds what one policy may expand to. The values are far above
// hand-written and generated policies (a few dozen rules and ports, up to
// thousands of ipBlock peers) and keep one policy from filling a node's
// policy map (--bpf-policy-max,
// 262,144 entries by default). Parse, Decode, Validate and Encode enforce
// them; a policy over one is invalid, with a *FieldError naming the limit.
const (
	// MaxInputBytes bounds what Parse reads: one policy file, which
	// meshctl policy apply writes in one etcd transaction.
	MaxInputBytes = 1 << 20
	// MaxPolicyBytes bounds one policy's stored form (Encode).
	MaxPolicyBytes = 256 << 10
	// MaxRules bounds the ingress plus egress rules of one policy.
	MaxRules = 1024
	// MaxPeers bounds the from or to peers of one rule (an allow-list of
	// a cloud provider's published ranges runs into the thousands).
	MaxPeers = 4096
	// MaxPorts bounds the ports of one rule.
	MaxPorts = 1024
	// MaxExcepts bounds the except blocks of one ipBlock.
	MaxExcepts = 1024
	// MaxSelectorTerms bounds matchLabels plus matchExpressions of one
	// label selector.
	MaxSelectorTerms = 64
	// MaxValues bounds the values of one matchExpressions requirement.
	MaxValues = 1024
	// MaxEntries bounds the policy map entries one policy makes on each
	// endpoint it selects, counted with one identity per peer: for each
	// rule, its peers (at least 1) times its ports (at least 1; a port
	// range counts the aligned blocks the datapath stores it as, up to
	// 30). As large as Cilium's whole per-endpoint policy map
	// (bpf-policy-map-max, 16384 by default).
	MaxEntries = 16384
)

// validateLimits reports every limit p breaks.
func (p *Policy) validateLimits(ps *problems) {
	s := &p.Spec
	if n := len(s.Ingress) + len(s.Egress); n > MaxRules {
		ps.add("spec", "%d rules; at most %d (ingress and egress together) make one policy: split it into several policies", n, MaxRules)
	}
	selectorLimits(ps, "spec.podSelector", &s.PodSelector)
	entries := 0
	rule := func(path string, ports []Port, peers []Peer, peersField string) {
		if len(peers) > MaxPeers {
			ps.add(field(path, peersField), "%d peers; at most %d make one rule: split the rule, or select the peers with fewer, wider selectors", len(peers), MaxPeers)
		}
		if len(ports) > MaxPorts {
			ps.add(field(path, "ports"), "%d ports; at most %d make one rule: split the rule, or use port ranges (endPort)", len(ports), MaxPorts)
		}
		for i := range peers {
			pp := index(field(path, peersField), i)
			if peers[i].PodSelector != nil {
				selectorLimits(ps, field(pp, "podSelector"), peers[i].PodSelector)
			}
			if peers[i].NamespaceSelector != nil {
				selectorLimits(ps, field(pp, "namespaceSelector"), peers[i].NamespaceSelector)
			}
			if b := peers[i].IPBlock; b != nil && len(b.Except) > MaxExcepts {
				ps.add(field(field(pp, "ipBlock"), "except"), "%d blocks; at most %d make one ipBlock: split the cidr into several ipBlock peers", len(b.Except), MaxExcepts)
			}
		}
		entries += max(1, len(peers)) * portEntries(ports)
	}
	for i, r := range s.Ingress {
		rule(index("spec.ingress", i), r.Ports, r.From, "from")
	}
	for i, r := range s.Egress {
		rule(index("spec.egress", i), r.Ports, r.To, "to")
	}
	if entries > MaxEntries {
		ps.add("spec", "expands to %d policy map entries per selected endpoint (peers times ports of each rule); at most %d: "+
			"use fewer, wider peers (a namespaceSelector, a larger ipBlock) or fewer ports per rule, or split the endpoints it selects across policies",
			entries, MaxEntries)
	}
}

func selectorLimits(ps *problems, path string, sel *LabelSelector) {
	if n := len(sel.MatchLabels) + len(sel.MatchExpressions); n > MaxSelectorTerms {
		ps.add(path, "%d terms; at most %d (matchLabels and matchExpressions together) make one selector", n, MaxSelectorTerms)
	}
	for i, r := range sel.MatchExpressions {
		if len(r.Values) > MaxValues {
			ps.add(field(index(field(path, "matchExpressions"), i), "values"), "%d values; at most %d make one requirement: use a label the pods share instead", len(r.Values), MaxValues)
		}
	}
}

// portEntries is how many entries a rule's ports make per identity: one
// per port, name or whole protocol, and one per aligned block of a range.
func portEntries(ports []Port) int {
	if len(ports) == 0 {
		return 1
	}
	n := 0
	for _, p := range ports {
		if p.Port == nil || p.Port.Name != "" || p.EndPort == nil || *p.EndPort <= p.Port.Number {
			n++
			continue
		}
		n += portBlocks(p.Port.Number, *p.EndPort)
	}
	return n
}

// portBlocks counts the fewest aligned power-of-two blocks that cover the
// ports from-to, as the datapath stores a range (bpf.PortPrefixes). Out of
// range ports are reported by validatePorts; they count as one.
func portBlocks(from, to int32) int {
	if from < 1 || to > 65535 || from > to {
		return 1
	}
	n := 0
	for start, end := uint32(from), uint32(to); start <= end; n++ {
		size := uint32(1) << 16
		for start%size != 0 || start+size-1 > end {
			size >>= 1
		}
		start += size
	}
	return n
}

// sizeLimit reports a stored form over MaxPolicyBytes.
func sizeLimit(ps *problems, n int) {
	if n > MaxPolicyBytes {
		ps.add("", "is %d bytes as stored; at most %d make one policy: split it into several policies", n, MaxPolicyBytes)
	}
}

// inputLimit is the error for input over MaxInputBytes.
func inputLimit(n int) error {
	return fmt.Errorf("%w: input is %d bytes; at most %d bytes of policies are read at once: split the file", ErrInvalid, n, MaxInputBytes)
}
