package nodeagent

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshplane/meshplane/kvstore"
)

// An etcd value the agent cannot decode never makes the datapath more
// permissive than the last good state (see docs/architecture.md,
// "Corrupt etcd values fail closed"):
//
//   - a key with a last good value keeps it in force (kvstore.Cache);
//   - a policy that was never valid is replaced by policy.DenyAll in its
//     namespace (policyHandler.Invalid);
//   - an endpoint that was never valid gets the unknown identity in the
//     ipcache (endpointHandler.Invalid);
//   - a service, node or identity that was never valid is not installed:
//     a service that is not installed is not translated, a node that is
//     not installed gets no routes, an identity that is not installed has
//     no labels and matches no selector.
//
// Every such value is logged at Error (a person must fix or delete the
// key), makes the agent degraded with a reason that names the key, and is
// counted per cache (meshplane_kvstore_cache_invalid_values and _total).

// The agent's watch caches, by the name status and metrics use.
const (
	cacheNodes      = "nodes"
	cacheEndpoints  = "endpoints"
	cacheServices   = "services"
	cachePolicies   = "policies"
	cacheIdentities = "identities"
	cachePods       = "pods"
	cacheNamespaces = "namespaces"
)

// inForceLastGood is what the agent enforces for an invalid key with a
// last good value.
const inForceLastGood = "keeping the last good version"

// inForce says what the agent enforces for an invalid key (relative to
// its cache's prefix) of cache.
func inForce(cache, key string, lastGood bool) string {
	if lastGood {
		return inForceLastGood
	}
	switch cache {
	case cachePolicies:
		if ns, _, ok := policyKeyParts(key); ok {
			return fmt.Sprintf("never valid: enforcing deny-all (ingress and egress, allowing nothing) for every pod of namespace %s", ns)
		}
		return "never valid: the key names no namespace, so it can concern no pod; nothing isolated"
	case cacheEndpoints:
		if ip, err := netip.ParseAddr(key); err == nil && ip.Zone() == "" {
			return fmt.Sprintf("never valid: %s is isolated with the unknown identity (0), which no policy selects", ip.Unmap())
		}
		return "never valid: the key is not an IP address; nothing installed"
	case cacheServices:
		return "never valid: not installed (the service is not translated)"
	case cacheNodes:
		return "never valid: not installed (the node gets no routes)"
	case cacheIdentities:
		return "never valid: not installed (an identity without labels matches no selector)"
	case cachePods, cacheNamespaces:
		return "never valid: not used (the pods concerned keep the labels they have; a new one without labels waits for valid metadata)"
	}
	return "never valid: not installed"
}

// newCache makes one of the agent's watch caches: its invalid values are
// logged at Error with what the agent enforces instead.
func newCache[T any](a *Agent, name, prefix string, decode kvstore.Decoder[T]) (*kvstore.Cache[T], error) {
	return kvstore.NewCache(a.client.Load(), kvstore.CacheConfig[T]{
		Prefix: prefix, Decode: decode,
		OnInvalid: func(k kvstore.InvalidKey) { a.logInvalid(name, prefix, k) },
	})
}

// identityInvalid is the identity allocator's OnInvalid.
func (a *Agent) identityInvalid(k kvstore.InvalidKey) {
	a.logInvalid(cacheIdentities, a.keys.IdentityIDPrefix(), k)
}

func (a *Agent) logInvalid(cache, prefix string, k kvstore.InvalidKey) {
	a.log.Error("etcd holds a value the agent cannot decode; fix or delete the key",
		"cache", cache, "key", prefix+k.Key, "err", k.Err, "inForce", inForce(cache, k.Key, k.LastGood))
}

// maxInvalidListed caps the invalid values one cache lists in the status
// (InvalidNow has the count): a flood of corrupt keys must not make the
// status unreadable.
const maxInvalidListed = 100

// maxInvalidReasons caps the reasons one cache adds to the status.
const maxInvalidReasons = 5

// invalidValues lists a cache's invalid values for the status.
func invalidValues(cache, prefix string, keys []kvstore.InvalidKey) []InvalidValue {
	out := make([]InvalidValue, 0, min(len(keys), maxInvalidListed))
	for _, k := range keys[:min(len(keys), maxInvalidListed)] {
		out = append(out, InvalidValue{
			Key: prefix + k.Key, Reason: strings.ReplaceAll(k.Err.Error(), "\n", "; "), ModRevision: k.ModRevision, LastGood: k.LastGood,
			InForce: inForce(cache, k.Key, k.LastGood),
		})
	}
	return out
}

// invalidReasons are the status reasons for a cache's invalid values.
func invalidReasons(cs CacheStatus) []string {
	var out []string
	for i, v := range cs.InvalidValues {
		if i == maxInvalidReasons {
			out = append(out, fmt.Sprintf("%s: %d more invalid values (see the %s cache's invalid values)", cs.Name, cs.InvalidNow-i, cs.Name))
			break
		}
		out = append(out, fmt.Sprintf("invalid etcd value %s (revision %d): %s: %s; fix or delete the key", v.Key, v.ModRevision, v.Reason, v.InForce))
	}
	return out
}
