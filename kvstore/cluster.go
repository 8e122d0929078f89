package kvstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshplane/meshplane/cluster"
)

// GetCluster reads the cluster's record (Keys.ClusterRecord); ok is false
// when there is none. A value that does not decode is an error wrapping
// cluster.ErrInvalid that names the key.
func GetCluster(ctx context.Context, c *Client, k Keys) (_ cluster.Record, ok bool, _ error) {
	kv, ok, err := c.Get(ctx, k.ClusterRecord())
	if err != nil || !ok {
		return cluster.Record{}, false, err
	}
	r, err := decodeCluster(kv)
	return r, err == nil, err
}

// EnsureCluster makes sure the cluster's record says the cluster of k
// with ID id. When there is no record, it creates one in a
// create-if-absent transaction (Client.Create): of creators that race,
// exactly one writes, and the others get its record back from the same
// transaction and compare it. When there is one, it compares it
// (cluster.Record.Check) and writes nothing.
//
// It returns the stored record, and whether this call created it. A
// record that names another cluster or ID is an error wrapping a
// *cluster.MismatchError (errors.As) that names the field, both values
// and what to fix; a record that does not decode is an error wrapping
// cluster.ErrInvalid. Either way nothing is written, and the caller must
// not go on: the record is never rewritten, since every identity carries
// the cluster ID. Other errors are etcd's (ErrUnavailable, ...), which a
// caller may retry.
func EnsureCluster(ctx context.Context, c *Client, k Keys, id int) (_ cluster.Record, created bool, _ error) {
	want := cluster.New(k.Cluster(), id, time.Now())
	b, err := want.Encode()
	if err != nil {
		return cluster.Record{}, false, fmt.Errorf("cluster record %s: %w", k.ClusterRecord(), err)
	}
	kv, err := c.Create(ctx, k.ClusterRecord(), b)
	if err == nil {
		return want, true, nil
	}
	if !errors.Is(err, ErrConflict) || kv.Key == "" {
		return cluster.Record{}, false, fmt.Errorf("cluster record: %w", err)
	}
	have, err := decodeCluster(kv)
	if err != nil {
		return cluster.Record{}, false, err
	}
	if err := have.Check(k.Cluster(), id); err != nil {
		return have, false, fmt.Errorf("cluster record %s: %w", kv.Key, err)
	}
	return have, false, nil
}

// decodeCluster decodes a read cluster record, with what to do when it is
// corrupt.
func decodeCluster(kv KeyValue) (cluster.Record, error) {
	r, err := cluster.Decode(kv.Value)
	if err != nil {
		return cluster.Record{}, fmt.Errorf("cluster record %s: %w; if --cluster-id is the ID this cluster's identities carry, "+
			"delete the record (etcdctl del %s) and the next start writes it again from its configuration (docs/operations.md)",
			kv.Key, err, kv.Key)
	}
	return r, nil
}
