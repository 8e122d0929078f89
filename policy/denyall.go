package policy

// DenyAll returns the policy an agent enforces in place of a stored one it
// cannot read (a corrupt etcd value it never saw valid): it selects every
// pod of namespace and allows nothing, ingress and egress. A
// NetworkPolicy selects only pods of its own namespace, so whatever the
// unreadable policy was, this is the narrowest assumption that never
// allows more than it did: a selected pod stays default-deny in every
// direction, and the allows of the namespace's other policies still add
// up (policies are a union). Its key is namespace/name, the unreadable
// policy's, so a valid value replaces it (SetPolicy) and a delete removes
// it (DeletePolicy).
func DenyAll(namespace, name string) *Policy {
	return &Policy{
		Kind: KindNetworkPolicy, Namespace: namespace, Name: name,
		Spec: Spec{PolicyTypes: []Type{TypeIngress, TypeEgress}},
	}
}
