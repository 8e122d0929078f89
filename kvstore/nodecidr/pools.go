package nodecidr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
)

// ErrPoolNotFound is returned for a pool name that does not exist.
var ErrPoolNotFound = errors.New("IPAM pool not found")

// ErrPoolInUse is returned when a change would orphan claimed node CIDRs.
var ErrPoolInUse = errors.New("IPAM pool change would orphan claimed node CIDRs")

// Pools reads and changes the cluster's IPAM pools in etcd. Every change is
// validated against all pools and existing claims and written in a
// transaction that fails if a pool or (for changes that could orphan
// claims) a claim changed since they were read: nothing half-done, nothing
// valid-only-at-read-time.
type Pools struct {
	client *kvstore.Client
	keys   kvstore.Keys
}

// NewPools returns the pool store of a cluster.
func NewPools(client *kvstore.Client, cluster string) (*Pools, error) {
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		return nil, err
	}
	return &Pools{client: client, keys: keys}, nil
}

// DecodePool parses and validates a pool read back from etcd.
func DecodePool(key string, value []byte) (ipam.Pool, error) {
	var p ipam.Pool
	if err := json.Unmarshal(value, &p); err != nil {
		return p, fmt.Errorf("pool key %s: %w", key, err)
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("pool key %s: %w", key, err)
	}
	return p, nil
}

// snapshot is the pools and claims at one moment.
type snapshot struct {
	pools      []ipam.Pool
	versionRev int64 // mod revision of the pools-version key (0: none)
	claims     map[netip.Prefix]Claim
	rev        int64 // revision of the claims read
}

// List returns the pools, sorted by name, and the pools version.
func (p *Pools) List(ctx context.Context) ([]ipam.Pool, error) {
	s, err := p.read(ctx, false)
	return s.pools, err
}

func (p *Pools) read(ctx context.Context, withClaims bool) (snapshot, error) {
	var s snapshot
	kvs, _, err := p.client.List(ctx, p.keys.IPAMPoolsPrefix())
	if err != nil {
		return s, fmt.Errorf("read IPAM pools: %w", err)
	}
	for _, kv := range kvs {
		pool, err := DecodePool(kv.Key, kv.Value)
		if err != nil {
			return s, fmt.Errorf("read IPAM pools: %w; fix or delete the key", err)
		}
		s.pools = append(s.pools, pool)
	}
	slices.SortFunc(s.pools, func(a, b ipam.Pool) int { return strings.Compare(a.Name, b.Name) })
	v, ok, err := p.client.Get(ctx, p.keys.IPAMPoolsVersion())
	if err != nil {
		return s, fmt.Errorf("read IPAM pools: %w", err)
	}
	if ok {
		s.versionRev = v.ModRevision
	}
	if withClaims {
		s.claims, s.rev, err = readClaims(ctx, p.client, p.keys)
		if err != nil {
			return s, err
		}
	}
	return s, nil
}

// Add creates a pool. It fails if the name exists or a CIDR overlaps
// another pool.
func (p *Pools) Add(ctx context.Context, pool ipam.Pool) error {
	if err := pool.Validate(); err != nil {
		return err
	}
	return p.change(ctx, pool.Name, func(s snapshot) (*ipam.Pool, error) {
		if slices.ContainsFunc(s.pools, func(q ipam.Pool) bool { return q.Name == pool.Name }) {
			return nil, fmt.Errorf("%w: pool %s exists; use update to change it", ipam.ErrInvalidPool, pool.Name)
		}
		if err := ipam.ValidatePools(append(slices.Clone(s.pools), pool)); err != nil {
			return nil, err
		}
		return &pool, nil
	})
}

// Update replaces a pool. It fails if a claimed node CIDR would no longer
// belong to it (a CIDR removed, or the mask size changed), listing them.
func (p *Pools) Update(ctx context.Context, pool ipam.Pool) error {
	if err := pool.Validate(); err != nil {
		return err
	}
	return p.change(ctx, pool.Name, func(s snapshot) (*ipam.Pool, error) {
		i := slices.IndexFunc(s.pools, func(q ipam.Pool) bool { return q.Name == pool.Name })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s", ErrPoolNotFound, pool.Name)
		}
		others := slices.Delete(slices.Clone(s.pools), i, i+1)
		if err := ipam.ValidatePools(append(others, pool)); err != nil {
			return nil, err
		}
		if err := orphans(s.claims, pool.Name, func(c netip.Prefix) bool { return pool.Contains(c) }); err != nil {
			return nil, err
		}
		return &pool, nil
	})
}

// Remove deletes a pool that has no claimed node CIDRs.
func (p *Pools) Remove(ctx context.Context, name string) error {
	return p.change(ctx, name, func(s snapshot) (*ipam.Pool, error) {
		if !slices.ContainsFunc(s.pools, func(q ipam.Pool) bool { return q.Name == name }) {
			return nil, fmt.Errorf("%w: %s", ErrPoolNotFound, name)
		}
		return nil, orphans(s.claims, name, func(netip.Prefix) bool { return false })
	})
}

// orphans returns ErrPoolInUse naming the claims of pool that keep would
// not keep.
func orphans(claims map[netip.Prefix]Claim, pool string, keep func(netip.Prefix) bool) error {
	var lost []string
	for c, cl := range claims {
		if cl.Pool == pool && !keep(c) {
			lost = append(lost, fmt.Sprintf("%s (node %s)", c, cl.Node))
		}
	}
	if len(lost) == 0 {
		return nil
	}
	slices.Sort(lost)
	more := ""
	if len(lost) > 5 {
		more = fmt.Sprintf(" and %d more", len(lost)-5)
		lost = lost[:5]
	}
	return fmt.Errorf("%w: pool %s: %s%s are claimed; drain those nodes (their CIDRs are reclaimed after they are gone) or keep the CIDRs",
		ErrPoolInUse, pool, strings.Join(lost, ", "), more)
}

// change runs decide on a fresh snapshot and writes its result (a pool to
// put, or nil to delete name) in a transaction that compares the pools
// version and that no claim changed since the snapshot. It retries when
// another writer got there first.
func (p *Pools) change(ctx context.Context, name string, decide func(snapshot) (*ipam.Pool, error)) error {
	for range 5 {
		s, err := p.read(ctx, true)
		if err != nil {
			return err
		}
		pool, err := decide(s)
		if err != nil {
			return err
		}
		var op clientv3.Op
		if pool != nil {
			b, err := json.Marshal(pool)
			if err != nil {
				return fmt.Errorf("encode pool %s: %w", pool.Name, err)
			}
			op = clientv3.OpPut(p.keys.IPAMPool(pool.Name), string(b))
		} else {
			op = clientv3.OpDelete(p.keys.IPAMPool(name))
		}
		resp, err := p.client.Etcd().Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(p.keys.IPAMPoolsVersion()), "=", s.versionRev),
			clientv3.Compare(clientv3.ModRevision(p.keys.IPAMCIDRsPrefix()), "<", s.rev+1).WithPrefix(),
		).Then(op, clientv3.OpPut(p.keys.IPAMPoolsVersion(), "")).Commit()
		if err != nil {
			return fmt.Errorf("write IPAM pool %s: %w", name, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("write IPAM pool %s: %w: pools or claims kept changing; try again", name, kvstore.ErrConflict)
}
