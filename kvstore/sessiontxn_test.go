package kvstore_test

import (
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
)

// putOnLease is the LeaseTxn that creates key (value "0") on lease and
// owns it.
func putOnLease(key string, lease kvstore.LeaseID) kvstore.LeaseTxn {
	return kvstore.LeaseTxn{
		If:    []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		Then:  []clientv3.Op{clientv3.OpPut(key, "0", clientv3.WithLease(clientv3.LeaseID(lease)))},
		Owned: []kvstore.KeyValue{{Key: key, Value: []byte("0")}},
	}
}

// TestSessionTxnLeaseRevoked revokes the session's lease behind its back
// and writes through Txn at once: Txn builds again on the new lease, the
// key lands on it, and the session owns it (it survives the next loss).
func TestSessionTxnLeaseRevoked(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second, RetryInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	old := s.State().Lease
	if _, err := c.Etcd().Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	key := prefix + "k000"
	var leases []kvstore.LeaseID
	resp, err := s.Txn(ctx, func(lease kvstore.LeaseID) (kvstore.LeaseTxn, error) {
		leases = append(leases, lease)
		return putOnLease(key, lease), nil
	})
	if err != nil || !resp.Succeeded {
		t.Fatalf("Txn() = %v, %v; want success on a new lease", resp, err)
	}
	if last := leases[len(leases)-1]; last == old {
		t.Fatalf("Txn built on leases %x, the last one the revoked %x", leases, old)
	}
	if err := ownedOnLease(ctx, c, prefix, 1, s.State().Lease); err != nil {
		t.Fatal(err)
	}
	if s.Owned() != 1 {
		t.Fatalf("Owned() = %d, want 1", s.Owned())
	}
	// Owned: a second loss writes it again.
	cur := s.State().Lease
	if _, err := c.Etcd().Revoke(ctx, clientv3.LeaseID(cur)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the owned key on a third lease", func() error {
		if l := s.State().Lease; l == cur || l == old {
			return errors.New("still on a revoked lease")
		}
		return ownedOnLease(ctx, c, prefix, 1, s.State().Lease)
	})
}

// TestSessionTxnOwnership: a transaction whose compares fail owns
// nothing; OwnedBy owns what it names from the answer; an error from
// build is returned as it is.
func TestSessionTxnOwnership(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	key := prefix + "k000"
	if err := c.Put(ctx, key, []byte("theirs")); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Txn(ctx, func(lease kvstore.LeaseID) (kvstore.LeaseTxn, error) { return putOnLease(key, lease), nil })
	if err != nil || resp.Succeeded {
		t.Fatalf("Txn(create an existing key) = %v, %v; want not succeeded", resp, err)
	}
	if s.Owned() != 0 {
		t.Fatalf("a failed transaction owns %d keys", s.Owned())
	}

	// Nested: the outer transaction always succeeds, the inner one decides.
	other := prefix + "k001"
	resp, err = s.Txn(ctx, func(lease kvstore.LeaseID) (kvstore.LeaseTxn, error) {
		inner := putOnLease(other, lease)
		return kvstore.LeaseTxn{
			Then: []clientv3.Op{clientv3.OpTxn(inner.If, inner.Then, nil)},
			OwnedBy: func(r *clientv3.TxnResponse) []kvstore.KeyValue {
				if r.Responses[0].GetResponseTxn().Succeeded {
					return inner.Owned
				}
				return nil
			},
		}, nil
	})
	if err != nil || !resp.Succeeded || s.Owned() != 1 {
		t.Fatalf("Txn(nested) = %v, %v, owned %d; want k001 owned", resp, err, s.Owned())
	}

	boom := errors.New("build failed")
	if _, err := s.Txn(ctx, func(kvstore.LeaseID) (kvstore.LeaseTxn, error) { return kvstore.LeaseTxn{}, boom }); !errors.Is(err, boom) {
		t.Fatalf("Txn(build fails) = %v, want %v", err, boom)
	}
}
