package node

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// Member is the value of members/<node>: a node that belongs to the
// cluster as its orchestrator (Kubernetes) lists it, with its addresses.
// The control plane's leader writes it; unlike the Record it rides on no
// lease, since a node belongs to the cluster whether or not its agent
// runs. The garbage collectors read it: a node that is still a member
// keeps its pod CIDRs and endpoints while its agent is down; one that is
// no longer a member (and has no record) loses them.
type Member struct {
	Name        string       `json:"name"`
	InternalIPs []netip.Addr `json:"internalIPs,omitempty"`
	ExternalIPs []netip.Addr `json:"externalIPs,omitempty"`
}

// Key is the member's key relative to members/: its name.
func (m Member) Key() string { return m.Name }

// Validate reports whether m can be stored: a name, valid addresses.
func (m Member) Validate() error {
	if m.Name == "" {
		return fmt.Errorf("%w: member without a name", ErrInvalid)
	}
	for _, a := range slices.Concat(m.InternalIPs, m.ExternalIPs) {
		if !a.IsValid() {
			return fmt.Errorf("%w: member %s: invalid address", ErrInvalid, m.Name)
		}
	}
	return nil
}

// Encode returns the member as stored in etcd (JSON); it refuses an
// invalid one.
func (m Member) Encode() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// DecodeMember parses the value of members/<name>; name is the key's
// last segment, which the member must match. Its errors wrap ErrInvalid.
func DecodeMember(name string, value []byte) (Member, error) {
	var m Member
	if err := json.Unmarshal(value, &m); err != nil {
		return Member{}, fmt.Errorf("%w: member %s: %w", ErrInvalid, name, err)
	}
	if m.Name != name {
		return Member{}, fmt.Errorf("%w: member %s: names node %q", ErrInvalid, name, m.Name)
	}
	if err := m.Validate(); err != nil {
		return Member{}, err
	}
	return m, nil
}
