package bpf

import (
	"errors"
	"fmt"
)

// CIDRValue is the CIDR map's value: the CIDR identity of a prefix that a
// policy's ipBlock names (its cidr or one of its excepts), or the world
// identity for a /0 cidr.
//
// The CIDR map (mp_cidr) is an LPM trie keyed like the ipcache
// (IPCacheKey: family, prefix), but it holds only those prefixes: unlike
// the ipcache, no pod, node or pod CIDR entry is in it, so the
// longest-prefix match of any address, a pod's included, is the most
// specific ipBlock prefix that contains it. The datapath looks the remote
// address up in it when the remote's own identity allowed nothing (see the
// lookup rule on PolicyKey); that is how an ipBlock that covers a pod's IP
// selects the pod, as Kubernetes wants, while selectors keep matching
// identities.
//
// The matching C struct (4 bytes):
//
//	struct mp_cidr_value {
//		__u32 identity; /* the prefix's CIDR identity (or world, 2); never 0 */
//	};
type CIDRValue struct {
	Identity uint32
}

// Validate reports whether v has an identity.
func (v CIDRValue) Validate() error {
	if v.Identity == 0 {
		return errors.New("cidr value: identity 0: want the prefix's CIDR identity")
	}
	return nil
}

// String returns e.g. "identity=16777217".
func (v CIDRValue) String() string {
	return fmt.Sprintf("identity=%d", v.Identity)
}
