package kvstore

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrConflict is returned when a compare-and-swap or compare-and-create
// finds the key not in the state the caller expected.
var ErrConflict = errors.New("kvstore: conflicting write")

// KeyValue is a key read from etcd.
type KeyValue struct {
	Key         string
	Value       []byte
	ModRevision int64
	Lease       int64
}

func fromKV(kv interface {
	GetKey() []byte
	GetValue() []byte
	GetModRevision() int64
	GetLease() int64
}) KeyValue {
	return KeyValue{Key: string(kv.GetKey()), Value: kv.GetValue(), ModRevision: kv.GetModRevision(), Lease: kv.GetLease()}
}

// WriteOption changes a write.
type WriteOption func(*writeOpts)

// writeOpts is what the WriteOptions of one write say.
type writeOpts struct {
	put  []clientv3.OpOption
	cond []Condition
}

// WithLease attaches the write to a lease (0 means none). Deletes ignore it.
func WithLease(id LeaseID) WriteOption {
	return func(o *writeOpts) {
		if id != 0 {
			o.put = append(o.put, clientv3.WithLease(clientv3.LeaseID(id)))
		}
	}
}

func collect(opts []WriteOption) writeOpts {
	var o writeOpts
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Create writes key only if it does not exist. When it exists, it returns
// the stored value with an error wrapping ErrConflict.
func (c *Client) Create(ctx context.Context, key string, value []byte, opts ...WriteOption) (KeyValue, error) {
	o := collect(opts)
	r, err := c.commit(ctx, o,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		[]clientv3.Op{clientv3.OpPut(key, string(value), o.put...)},
		[]clientv3.Op{clientv3.OpGet(key)})
	if err != nil {
		return KeyValue{}, fmt.Errorf("create %s: %w", key, err)
	}
	if !r.succeeded {
		kvs := r.responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 {
			return fromKV(kvs[0]), fmt.Errorf("create %s: %w: the key exists", key, ErrConflict)
		}
		return KeyValue{}, fmt.Errorf("create %s: %w", key, ErrConflict)
	}
	return KeyValue{Key: key, Value: value, ModRevision: r.rev}, nil
}

// Swap writes key only if its mod revision is still modRev (0: the key must
// not exist). On a mismatch it returns the current value (if any) and an
// error wrapping ErrConflict.
func (c *Client) Swap(ctx context.Context, key string, modRev int64, value []byte, opts ...WriteOption) (KeyValue, error) {
	o := collect(opts)
	r, err := c.commit(ctx, o,
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", modRev)},
		[]clientv3.Op{clientv3.OpPut(key, string(value), o.put...)},
		[]clientv3.Op{clientv3.OpGet(key)})
	if err != nil {
		return KeyValue{}, fmt.Errorf("swap %s: %w", key, err)
	}
	if !r.succeeded {
		kvs := r.responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 {
			return fromKV(kvs[0]), fmt.Errorf("swap %s: %w: modified at revision %d, expected %d", key, ErrConflict, kvs[0].ModRevision, modRev)
		}
		return KeyValue{}, fmt.Errorf("swap %s: %w: the key is gone", key, ErrConflict)
	}
	return KeyValue{Key: key, Value: value, ModRevision: r.rev}, nil
}

// DeleteIf deletes key only if its mod revision is still modRev. Only
// WithCondition matters among opts.
func (c *Client) DeleteIf(ctx context.Context, key string, modRev int64, opts ...WriteOption) error {
	r, err := c.commit(ctx, collect(opts),
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", modRev)},
		[]clientv3.Op{clientv3.OpDelete(key)}, nil)
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if !r.succeeded {
		return fmt.Errorf("delete %s: %w: not at revision %d", key, ErrConflict, modRev)
	}
	return nil
}

// Get reads one key; ok is false when it does not exist.
func (c *Client) Get(ctx context.Context, key string) (kv KeyValue, ok bool, err error) {
	resp, err := c.etcd.Get(ctx, key)
	if err != nil {
		return KeyValue{}, false, fmt.Errorf("get %s: %w", key, wrapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return KeyValue{}, false, nil
	}
	return fromKV(resp.Kvs[0]), true, nil
}

// Put writes key (unconditionally, unless WithCondition says otherwise).
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...WriteOption) error {
	o := collect(opts)
	var err error
	if len(o.cond) == 0 {
		_, err = c.etcd.Put(ctx, key, string(value), o.put...)
		err = wrapErr(err)
	} else {
		_, err = c.commit(ctx, o, nil, []clientv3.Op{clientv3.OpPut(key, string(value), o.put...)}, nil)
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Delete removes key (unconditionally, unless WithCondition says
// otherwise). Deleting a key that does not exist is not an error.
func (c *Client) Delete(ctx context.Context, key string, opts ...WriteOption) error {
	o := collect(opts)
	var err error
	if len(o.cond) == 0 {
		_, err = c.etcd.Delete(ctx, key)
		err = wrapErr(err)
	} else {
		_, err = c.commit(ctx, o, nil, []clientv3.Op{clientv3.OpDelete(key)}, nil)
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// listPage is how many keys one range request returns.
const listPage = 5000

// List reads every key under prefix at one revision, in pages, and returns
// them with that revision.
func (c *Client) List(ctx context.Context, prefix string) ([]KeyValue, int64, error) {
	var (
		out []KeyValue
		rev int64
		key = prefix
		end = clientv3.GetPrefixRangeEnd(prefix)
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.etcd.Get(ctx, key, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list %s: %w", prefix, wrapErr(err))
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			out = append(out, fromKV(kv))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// wrapErr marks errors that mean etcd did not answer with ErrUnavailable.
func wrapErr(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	if isUserEmpty(err) {
		return fmt.Errorf("%w: %s: %w", ErrAuth, needsUser, err)
	}
	if isUnavailable(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

func isUnavailable(err error) bool {
	s, ok := status.FromError(err)
	return ok && (s.Code() == codes.Unavailable || s.Code() == codes.DeadlineExceeded)
}

// MaxTxnOps is etcd's default limit (--max-txn-ops) of operations in one
// transaction: the most a Store's PutAll or Txn writes atomically.
const MaxTxnOps = 128

// PutMany writes kvs unconditionally, MaxTxnOps keys per transaction: NOT
// atomically as a whole, a failure can leave the first transactions
// written. It is for bulk loads in benchmarks and tests; a write that must
// be all or nothing uses Store.PutAll or Store.Txn.
func (c *Client) PutMany(ctx context.Context, kvs []KeyValue) error {
	for len(kvs) > 0 {
		n := min(len(kvs), MaxTxnOps)
		ops := make([]clientv3.Op, n)
		for i, kv := range kvs[:n] {
			ops[i] = clientv3.OpPut(kv.Key, string(kv.Value))
		}
		if _, err := c.etcd.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("put %d keys from %s: %w", n, kvs[0].Key, wrapErr(err))
		}
		kvs = kvs[n:]
	}
	return nil
}
