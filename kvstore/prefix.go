package kvstore

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeletePrefix deletes every key under prefix in one request and returns
// how many keys it deleted. An empty prefix is refused: it would wipe the
// whole keyspace, other tenants' keys included. Keys on a lease are deleted
// too; the lease itself stays.
func (c *Client) DeletePrefix(ctx context.Context, prefix string) (int64, error) {
	if prefix == "" {
		return 0, fmt.Errorf("%w: refusing to delete the empty prefix (the whole keyspace)", ErrConfig)
	}
	resp, err := c.etcd.Delete(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("delete prefix %s: %w", prefix, wrapErr(err))
	}
	return resp.Deleted, nil
}
