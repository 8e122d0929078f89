package policy

import "maps"

// canonical returns a deep copy of p with Kubernetes' defaults filled in
// and empty lists and maps made nil, so that policies that mean the same
// compare equal and encode to the same bytes. It never shares memory with
// p and never fails: an invalid policy stays invalid for Validate to
// report.
func canonical(p *Policy) *Policy {
	c := &Policy{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	s := &c.Spec
	s.PodSelector = *canonicalSelector(&p.Spec.PodSelector)
	s.PolicyTypes = effectiveTypes(&p.Spec)
	for _, r := range p.Spec.Ingress {
		s.Ingress = append(s.Ingress, IngressRule{Ports: canonicalPorts(r.Ports), From: canonicalPeers(r.From)})
	}
	for _, r := range p.Spec.Egress {
		s.Egress = append(s.Egress, EgressRule{Ports: canonicalPorts(r.Ports), To: canonicalPeers(r.To)})
	}
	return c
}

// effectiveTypes is spec.policyTypes, or Kubernetes' default when it is
// empty: Ingress, plus Egress when there are egress rules.
func effectiveTypes(s *Spec) []Type {
	if len(s.PolicyTypes) > 0 {
		return append([]Type(nil), s.PolicyTypes...)
	}
	if len(s.Egress) > 0 {
		return []Type{TypeIngress, TypeEgress}
	}
	return []Type{TypeIngress}
}

func canonicalSelector(sel *LabelSelector) *LabelSelector {
	if sel == nil {
		return nil
	}
	c := &LabelSelector{}
	if len(sel.MatchLabels) > 0 {
		c.MatchLabels = maps.Clone(sel.MatchLabels)
	}
	for _, r := range sel.MatchExpressions {
		c.MatchExpressions = append(c.MatchExpressions, LabelSelectorRequirement{
			Key: r.Key, Operator: r.Operator, Values: cloneStrings(r.Values),
		})
	}
	return c
}

func canonicalPorts(ports []Port) []Port {
	var out []Port
	for _, p := range ports {
		c := Port{Protocol: p.Protocol}
		if c.Protocol == "" {
			c.Protocol = ProtocolTCP
		}
		if p.Port != nil {
			v := *p.Port
			c.Port = &v
		}
		if p.EndPort != nil {
			e := *p.EndPort
			c.EndPort = &e
		}
		out = append(out, c)
	}
	return out
}

func canonicalPeers(peers []Peer) []Peer {
	var out []Peer
	for _, p := range peers {
		c := Peer{
			PodSelector:       canonicalSelector(p.PodSelector),
			NamespaceSelector: canonicalSelector(p.NamespaceSelector),
			Clusters:          cloneStrings(p.Clusters),
		}
		if p.IPBlock != nil {
			c.IPBlock = &IPBlock{CIDR: p.IPBlock.CIDR, Except: cloneStrings(p.IPBlock.Except)}
		}
		out = append(out, c)
	}
	return out
}

func cloneStrings(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}
