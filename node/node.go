package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// ErrInvalid is wrapped by every decoding error.
var ErrInvalid = errors.New("invalid node record")

// Record is the value of nodes/<node>, on the node's lease: the durable
// registry of nodes and the sign, for IPAM's GC, that a node still exists.
//
// IPAM writes it with every claim (Name, PodCIDRs, Usage); the agent adds
// the rest, and every write carries all fields.
type Record struct {
	Name     string         `json:"name"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	// Usage is the pod IP usage per CIDR, as the node last published it.
	Usage []CIDRUsage `json:"usage,omitempty"`

	// IPs are the node's own addresses (the targets of routes to its pod
	// CIDRs).
	IPs []netip.Addr `json:"ips,omitempty"`
	// GossipAddr is the host:port of the node's gossip (memberlist)
	// endpoint; other agents join gossip through it.
	GossipAddr string `json:"gossipAddr,omitempty"`
	// Labels are the node's labels.
	Labels map[string]string `json:"labels,omitempty"`
	// Version is the agent's version.
	Version string `json:"version,omitempty"`
	// ClusterID is the cluster's numeric ID (1-255).
	ClusterID int `json:"clusterID,omitempty"`
	// PolicyRevision is the etcd revision up to which the node enforces
	// the cluster's policies: every change under policies/ with a mod
	// revision at or below it has gone through the node's policy engine
	// and is written in its pinned maps. A policy whose mod revision is
	// above it has not reached the node yet. 0: not known yet (or an agent
	// too old to publish it). `meshctl policy list --agent` reads it.
	PolicyRevision int64 `json:"policyRevision,omitempty"`
}

// CIDRUsage is how many pod IPs of a node CIDR are in use.
type CIDRUsage struct {
	CIDR netip.Prefix `json:"cidr"`
	Used int          `json:"used"`
	Free int          `json:"free"`
}

// Encode returns the record as stored in etcd (JSON).
func (r Record) Encode() []byte {
	// Marshal cannot fail: every field is a string, a number, a
	// netip value or a map of strings.
	b, _ := json.Marshal(r)
	return b
}

// Decode parses the value of nodes/<name>; name is the key's last segment,
// which the record must match. Its errors wrap ErrInvalid.
func Decode(name string, value []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %s: %w", ErrInvalid, name, err)
	}
	if r.Name != name {
		return r, fmt.Errorf("%w: %s: names node %q", ErrInvalid, name, r.Name)
	}
	for _, p := range r.PodCIDRs {
		if !p.IsValid() || p.Masked() != p {
			return r, fmt.Errorf("%w: %s: pod CIDR %s is not a masked CIDR", ErrInvalid, name, p)
		}
	}
	for _, a := range r.IPs {
		if !a.IsValid() {
			return r, fmt.Errorf("%w: %s: invalid node IP", ErrInvalid, name)
		}
	}
	return r, nil
}
