package kvstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrTooManyOps is wrapped when one PutAll or Txn would need more than
// MaxTxnOps operations: etcd would refuse it, and splitting it would
// break its all-or-nothing promise. Nothing is written.
var ErrTooManyOps = errors.New("kvstore: too many operations for one transaction")

// Codec says how values of one model are stored: the value's encoding and
// the key it lives under, relative to a Store's or a Cache's prefix.
type Codec[T any] struct {
	// Decode parses a stored value; key is relative to the prefix. It must
	// refuse a value that the key does not name (policies/a/b holding
	// policy a/c); the ready-made codecs do it with CheckKey.
	Decode Decoder[T]
	// Encode returns the stored form of a value; it refuses an invalid one.
	Encode func(T) ([]byte, error)
	// Key returns the key of a value, relative to the prefix.
	Key func(T) string
}

// CheckKey wraps decode so that a value whose own key (by key) differs
// from the key it was read from is an error ("the value is policy a/c,
// not a/b"; what names the model): the key/value agreement check,
// written once for every codec.
func CheckKey[T any](what string, decode func(key string, value []byte) (T, error), key func(T) string) Decoder[T] {
	return func(k string, value []byte) (T, error) {
		v, err := decode(k, value)
		if err != nil {
			return v, err
		}
		if got := key(v); got != k {
			var zero T
			return zero, fmt.Errorf("the value is %s %s, not %s: write it under its own key or delete the key", what, got, k)
		}
		return v, nil
	}
}

// Item is one stored value, as Store.List and Store.Get read it.
type Item[T any] struct {
	// Key is relative to the store's prefix.
	Key   string
	Value T
	// ModRevision is the key's mod revision (for DeleteIf).
	ModRevision int64
	// Err is what Decode said about a value it refused (a corrupt or
	// hand-edited key); Value is then the zero T.
	Err error
}

// Store is a typed view of one etcd prefix: every value is encoded,
// keyed and decoded by one Codec, so no caller builds the keys or values
// of another package by hand. It holds no state and is safe for
// concurrent use. Its writes take WriteOptions: WithCondition fences a
// leader's writes (Leadership.Condition).
type Store[T any] struct {
	client *Client
	prefix string
	codec  Codec[T]
}

// NewStore returns a store of the values under prefix.
func NewStore[T any](c *Client, prefix string, codec Codec[T]) *Store[T] {
	return &Store[T]{client: c, prefix: prefix, codec: codec}
}

// Prefix returns the store's prefix.
func (s *Store[T]) Prefix() string { return s.prefix }

// Key returns the full etcd key of v.
func (s *Store[T]) Key(v T) string { return s.prefix + s.codec.Key(v) }

// CacheConfig returns the config of a Cache of the store's prefix, with
// the store's decoder, so that a cache and a store read values alike.
func (s *Store[T]) CacheConfig() CacheConfig[T] {
	return CacheConfig[T]{Prefix: s.prefix, Decode: s.codec.Decode}
}

// put encodes v into a put op.
func (s *Store[T]) put(v T, o writeOpts) (clientv3.Op, string, error) {
	rel := s.codec.Key(v)
	if rel == "" {
		return clientv3.Op{}, "", fmt.Errorf("%w: a value with an empty key cannot be stored under %s", ErrConfig, s.prefix)
	}
	b, err := s.codec.Encode(v)
	if err != nil {
		return clientv3.Op{}, rel, fmt.Errorf("encode %s: %w", rel, err)
	}
	return clientv3.OpPut(s.prefix+rel, string(b), o.put...), rel, nil
}

// Put writes v under its key.
func (s *Store[T]) Put(ctx context.Context, v T, opts ...WriteOption) error {
	return s.Txn(ctx, []T{v}, nil, opts...)
}

// PutAll writes vs in one etcd transaction: all of them or, on any error,
// none. It refuses more than MaxTxnOps values (ErrTooManyOps) and two
// values with one key, before it writes anything.
func (s *Store[T]) PutAll(ctx context.Context, vs []T, opts ...WriteOption) error {
	return s.Txn(ctx, vs, nil, opts...)
}

// Txn writes puts and deletes (keys relative to the prefix) in one etcd
// transaction, all or nothing, for level-triggered writers that apply a
// difference: at most MaxTxnOps operations, and no key twice.
func (s *Store[T]) Txn(ctx context.Context, puts []T, deletes []string, opts ...WriteOption) error {
	n := len(puts) + len(deletes)
	if n == 0 {
		return nil
	}
	if n > MaxTxnOps {
		return fmt.Errorf("write %d keys under %s: %w: at most %d go in one transaction; nothing written",
			n, s.prefix, ErrTooManyOps, MaxTxnOps)
	}
	o := collect(opts)
	ops := make([]clientv3.Op, 0, n)
	seen := make(map[string]struct{}, n)
	dup := func(rel string) error {
		if _, ok := seen[rel]; ok {
			return fmt.Errorf("write under %s: %w: key %s is named twice in one transaction; nothing written", s.prefix, ErrConfig, rel)
		}
		seen[rel] = struct{}{}
		return nil
	}
	for _, v := range puts {
		op, rel, err := s.put(v, o)
		if err != nil {
			return fmt.Errorf("write under %s: %w; nothing written", s.prefix, err)
		}
		if err := dup(rel); err != nil {
			return err
		}
		ops = append(ops, op)
	}
	for _, rel := range deletes {
		if rel == "" {
			return fmt.Errorf("delete under %s: %w: empty key; nothing written", s.prefix, ErrConfig)
		}
		if err := dup(rel); err != nil {
			return err
		}
		ops = append(ops, clientv3.OpDelete(s.prefix+rel))
	}
	if _, err := s.client.commit(ctx, o, nil, ops, nil); err != nil {
		return fmt.Errorf("write %d keys under %s: %w", n, s.prefix, err)
	}
	return nil
}

// Delete removes the value at key (relative to the prefix); a key that
// does not exist is not an error. Only WithCondition matters among opts.
func (s *Store[T]) Delete(ctx context.Context, key string, opts ...WriteOption) error {
	return s.client.Delete(ctx, s.prefix+key, opts...)
}

// DeleteIf removes the value at key only if its mod revision is still
// modRev (from List or Get); otherwise it returns an error wrapping
// ErrConflict and deletes nothing.
func (s *Store[T]) DeleteIf(ctx context.Context, key string, modRev int64, opts ...WriteOption) error {
	return s.client.DeleteIf(ctx, s.prefix+key, modRev, opts...)
}

// Get reads the value at key (relative to the prefix); ok is false when
// there is none. A value Decode refuses is an Item with Err set, not an
// error.
func (s *Store[T]) Get(ctx context.Context, key string) (_ Item[T], ok bool, _ error) {
	kv, ok, err := s.client.Get(ctx, s.prefix+key)
	if err != nil || !ok {
		return Item[T]{}, false, err
	}
	return s.item(kv), true, nil
}

// List reads every value under the prefix at one revision, sorted by key,
// and returns them with that revision. Values Decode refuses are listed
// with Err set, so that a caller can show the corrupt keys.
func (s *Store[T]) List(ctx context.Context) ([]Item[T], int64, error) {
	return s.ListPrefix(ctx, "")
}

// ListPrefix is List of the keys that start with sub (relative to the
// store's prefix), such as one namespace's "<namespace>/".
func (s *Store[T]) ListPrefix(ctx context.Context, sub string) ([]Item[T], int64, error) {
	kvs, rev, err := s.client.List(ctx, s.prefix+sub)
	if err != nil {
		return nil, 0, err
	}
	out := make([]Item[T], 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, s.item(kv))
	}
	return out, rev, nil
}

func (s *Store[T]) item(kv KeyValue) Item[T] {
	rel := strings.TrimPrefix(kv.Key, s.prefix)
	it := Item[T]{Key: rel, ModRevision: kv.ModRevision}
	v, err := s.codec.Decode(rel, kv.Value)
	if err != nil {
		it.Err = err
		return it
	}
	it.Value = v
	return it
}
