package kvstore

import (
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// The codecs and stores of the models whose etcd side kvstore owns, so
// that no caller builds their keys or values by hand. Keys.PoliciesPrefix
// and Keys.ServicesPrefix are their prefixes.

// PolicyCodec stores a *policy.Policy under "<namespace>/<name>" as the
// canonical JSON of Policy.Encode; Decode validates and defaults it and
// checks that the key names it. A nil policy must not be stored.
func PolicyCodec() Codec[*policy.Policy] {
	key := (*policy.Policy).Key
	return Codec[*policy.Policy]{
		Decode: CheckKey("policy", func(_ string, value []byte) (*policy.Policy, error) { return policy.Decode(value) }, key),
		Encode: (*policy.Policy).Encode,
		Key:    key,
	}
}

// PolicyStore is the store of the cluster's network policies
// (policies/<namespace>/<name>).
func PolicyStore(c *Client, k Keys) *Store[*policy.Policy] {
	return NewStore(c, k.PoliciesPrefix(), PolicyCodec())
}

// ServiceCodec stores a service.Service under "<namespace>/<name>" as the
// JSON of Service.Encode; Decode validates it and checks that the key
// names it.
func ServiceCodec() Codec[service.Service] {
	return Codec[service.Service]{
		Decode: CheckKey("service", service.Decode, service.Service.Key),
		Encode: service.Service.Encode,
		Key:    service.Service.Key,
	}
}

// ServiceStore is the store of the cluster's services
// (services/<namespace>/<name>).
func ServiceStore(c *Client, k Keys) *Store[service.Service] {
	return NewStore(c, k.ServicesPrefix(), ServiceCodec())
}
