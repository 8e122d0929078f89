package kvstore

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaseTxn is a transaction that writes keys on a session's lease, as
// the build function of Session.Txn returns it: "if If then Then else
// Else", plus the keys the session is to own once it has run. It is for
// kvstore's own subpackages (allocators), which build etcd operations.
type LeaseTxn struct {
	If   []clientv3.Cmp
	Then []clientv3.Op
	Else []clientv3.Op

	// Owned are keys (and their values) that Then writes on the lease.
	// When the transaction succeeds (its compares held), the session owns
	// them: it writes them again after a lease loss and, under its Guard,
	// repairs them. From before the commit until they are owned, the guard
	// leaves them alone (as Session.Writing), so that the new value's watch
	// event never brings back the old one.
	Owned []KeyValue

	// OwnedBy, if set, names the keys the transaction wrote on the lease
	// from its answer, for transactions whose nested parts decide that
	// (one identity batch joins some label sets and loses others). It is
	// called once, after the commit that counted, whether or not the
	// outer compares held; the session owns what it returns. Unlike
	// Owned, these keys are not shielded from the guard before the call.
	OwnedBy func(*clientv3.TxnResponse) []KeyValue
}

// Txn commits the transaction that build returns for the current lease,
// waiting for a lease if there is none, and records the keys it owns
// (LeaseTxn.Owned, OwnedBy). When etcd answers that the lease is gone,
// the session learns it at once (it grants a new lease and re-asserts its
// keys) and Txn calls build again with the new lease; build must
// therefore have no effects beyond the LeaseTxn it returns. Any other
// error is returned as it is, with nothing owned. The answer is etcd's:
// Succeeded says whether If held.
func (s *Session) Txn(ctx context.Context, build func(lease LeaseID) (LeaseTxn, error)) (*clientv3.TxnResponse, error) {
	for {
		lease, err := s.Lease(ctx)
		if err != nil {
			return nil, err
		}
		t, err := build(lease)
		if err != nil {
			return nil, err
		}
		dones := make([]func(), 0, len(t.Owned))
		for _, kv := range t.Owned {
			dones = append(dones, s.Writing(kv.Key))
		}
		resp, err := s.client.etcd.Txn(ctx).If(t.If...).Then(t.Then...).Else(t.Else...).Commit()
		if err == nil {
			if resp.Succeeded {
				for _, kv := range t.Owned {
					s.Own(kv.Key, string(kv.Value), lease)
				}
			}
			if t.OwnedBy != nil {
				for _, kv := range t.OwnedBy(resp) {
					s.Own(kv.Key, string(kv.Value), lease)
				}
			}
		}
		for _, done := range dones {
			done()
		}
		if isLeaseNotFound(err) {
			s.lost(lease, err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("transaction on lease %x: %w", int64(lease), wrapErr(err))
		}
		return resp, nil
	}
}
