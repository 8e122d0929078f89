package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/kvstore"
)

func newClusterCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Create and show the cluster record: the cluster's name and ID in its etcd",
		Long: `Every cluster has a name (--cluster-name, its key prefix in etcd) and an ID
(--cluster-id, 1-255, unique in a mesh, in bits 16-23 of every identity). Both
are stored once in the cluster's etcd, at /meshplane/v1/<name>/cluster, by the
first of 'meshctl cluster init', 'meshctl ipam pool add', mesh-controlplane and
mesh-agent; every later one compares it with its own flags and refuses to go on
when they differ. Nothing rewrites it.`,
	}
	cmd.AddCommand(newClusterInitCmd(o), newClusterShowCmd(o))
	return cmd
}

func newClusterInitCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create the cluster record from --cluster-name and --cluster-id",
		Long: `init writes the cluster record with --cluster-name and --cluster-id, if the
cluster has none. When it has one, init compares it: the same name and ID
succeed without writing (an install's Job may run again); another ID is an
error that says which, and nothing is written.`,
		Example: `  meshctl --etcd-endpoints https://etcd-0:2379 --cluster-name east --cluster-id 3 cluster init`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			ctx := cmd.Context()
			client, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer closeClient(client, &err)
			rec, created, err := kvstore.EnsureCluster(ctx, client, o.keys(), o.clusterID)
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(o.stdout, "cluster %s (ID %d) created\n", rec.Name, rec.ID)
			} else {
				fmt.Fprintf(o.stdout, "cluster %s (ID %d) exists as given\n", rec.Name, rec.ID)
			}
			return nil
		},
	}
}

func newClusterShowCmd(o *options) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the cluster record of --cluster-name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if err := checkFormat(format); err != nil {
				return err
			}
			ctx := cmd.Context()
			client, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer closeClient(client, &err)
			k := o.keys()
			rec, ok, err := kvstore.GetCluster(ctx, client, k)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("cluster %s has no cluster record (%s) yet: mesh-controlplane, the first mesh-agent, "+
					"'meshctl cluster init' and 'meshctl ipam pool add' create it", k.Cluster(), k.ClusterRecord())
			}
			if format == formatJSON {
				return writeJSON(o.stdout, rec)
			}
			t := newTable(o.stdout, "NAME", "ID", "CREATED", "FORMAT")
			t.row(rec.Name, fmt.Sprint(rec.ID), createdAt(rec), fmt.Sprint(rec.Format))
			return t.flush()
		},
	}
	addOutputFlag(cmd, &format)
	return cmd
}

func createdAt(r cluster.Record) string {
	if r.Created.IsZero() {
		return "-"
	}
	return r.Created.Format(time.RFC3339)
}

// ensureCluster makes sure the cluster record says --cluster-name and
// --cluster-id before a command writes into the cluster, creating it
// when absent (kvstore.EnsureCluster).
func (o *options) ensureCluster(ctx context.Context, client *kvstore.Client) error {
	rec, created, err := kvstore.EnsureCluster(ctx, client, o.keys(), o.clusterID)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(o.stderr, "cluster record created: cluster %s, ID %d\n", rec.Name, rec.ID)
	}
	return nil
}
