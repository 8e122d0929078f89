package kvstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrConditionFailed is wrapped when a write's Condition (WithCondition)
// is false: the write changed nothing. A leader whose write fails with it
// has been deposed and must stop (see Leadership).
var ErrConditionFailed = errors.New("kvstore: write condition is false")

// Condition is a precondition of a write, checked by etcd in the same
// transaction as the write: when it is false, nothing is written. It is
// opaque; Leadership.Condition and KeyCreatedAt make one. The zero
// Condition is never true, so that a forgotten fence fails closed.
type Condition struct {
	cmps []clientv3.Cmp
	desc string
}

// KeyCreatedAt is true while key exists with create revision rev: it was
// not deleted and re-created since. rev 0 is never true.
func KeyCreatedAt(key string, rev int64) Condition {
	if rev == 0 {
		return Condition{}
	}
	return Condition{
		cmps: []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)},
		desc: fmt.Sprintf("%s created at revision %d", key, rev),
	}
}

// String says what the condition requires.
func (c Condition) String() string {
	if len(c.cmps) == 0 {
		return "the zero condition (never true)"
	}
	return c.desc
}

// WithCondition makes the write conditional on c: etcd checks c and does
// the write in one transaction, and a false c writes nothing and returns
// an error wrapping ErrConditionFailed. Several WithConditions must all
// hold.
func WithCondition(c Condition) WriteOption {
	return func(o *writeOpts) { o.cond = append(o.cond, c) }
}

// txnResult is the answer to a transaction that commit ran.
type txnResult struct {
	rev       int64 // revision of the answer
	succeeded bool  // the caller's own compares held
	responses []*pb.ResponseOp
}

// commit runs "if cmps then ops else els" under the conditions of o. With
// conditions, the caller's transaction is nested in one that compares
// them first, so that a false condition is told apart from the caller's
// own compares failing: it is an error wrapping ErrConditionFailed.
func (c *Client) commit(ctx context.Context, o writeOpts, cmps []clientv3.Cmp, ops, els []clientv3.Op) (txnResult, error) {
	if len(o.cond) == 0 {
		resp, err := c.etcd.Txn(ctx).If(cmps...).Then(ops...).Else(els...).Commit()
		if err != nil {
			return txnResult{}, wrapErr(err)
		}
		return txnResult{rev: resp.Header.Revision, succeeded: resp.Succeeded, responses: resp.Responses}, nil
	}
	var fence []clientv3.Cmp
	descs := make([]string, 0, len(o.cond))
	for _, cd := range o.cond {
		if len(cd.cmps) == 0 {
			return txnResult{}, fmt.Errorf("%w: %s", ErrConditionFailed, cd)
		}
		fence = append(fence, cd.cmps...)
		descs = append(descs, cd.desc)
	}
	nested := len(cmps) > 0 || len(els) > 0
	inner := ops
	if nested {
		inner = []clientv3.Op{clientv3.OpTxn(cmps, ops, els)}
	}
	resp, err := c.etcd.Txn(ctx).If(fence...).Then(inner...).Commit()
	if err != nil {
		return txnResult{}, wrapErr(err)
	}
	if !resp.Succeeded {
		return txnResult{}, fmt.Errorf("%w: want %s", ErrConditionFailed, strings.Join(descs, " and "))
	}
	if nested {
		r := resp.Responses[0].GetResponseTxn()
		return txnResult{rev: resp.Header.Revision, succeeded: r.Succeeded, responses: r.Responses}, nil
	}
	return txnResult{rev: resp.Header.Revision, succeeded: true, responses: resp.Responses}, nil
}
