package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshplane/meshplane/cmd/internal/etcdflags"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/kvstore/embedded"
)

// options are the global flags. PersistentPreRunE fills those not given
// from the environment and checks them before any command runs.
type options struct {
	stdout, stderr io.Writer

	etcd      kvstore.Config // the --etcd-* flags (cmd/internal/etcdflags)
	etcdFlags *etcdflags.Flags
	embedded  bool
	stateDir  string
	// stateDirGiven is whether --state-dir was on the command line (not
	// from MESHPLANE_STATE_DIR): demo then keeps its data there.
	stateDirGiven bool

	clusterName string
	clusterID   int
	nodeName    string
}

// New returns the meshctl root command, writing results to stdout and
// warnings and progress to stderr.
func New(stdout, stderr io.Writer) *cobra.Command {
	o := &options{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "meshctl",
		Short: "Operate and inspect meshplane",
		Long: `meshctl operates and inspects meshplane, a networking control plane whose
state lives in etcd.

meshctl talks to the etcd that --etcd-endpoints names. On one machine,
--etcd-embedded instead starts an etcd inside meshctl with its data in
--state-dir (no other process may use that directory at the same time);
demo always runs its own, and lab starts one per lab cluster.

Every global flag also has an environment variable, MESHPLANE_ and the
flag's name in capitals with '-' as '_' (--etcd-endpoints is
MESHPLANE_ETCD_ENDPOINTS); a flag beats the environment.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			o.stateDirGiven = cmd.Flags().Changed("state-dir")
			if err := o.etcdFlags.SetFromEnv(); err != nil {
				return err
			}
			if err := o.validate(); err != nil {
				return err
			}
			for _, w := range o.etcdFlags.Warnings() {
				fmt.Fprintln(o.stderr, "meshctl: warning:", w)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w; see '%s --help'", err, c.CommandPath())
	})
	o.addFlags(root.PersistentFlags())
	root.AddCommand(newClusterCmd(o), newIdentityCmd(o), newIPAMCmd(o), newBenchCmd(o), newDemoCmd(o),
		newStatusCmd(o), newNodeCmd(o), newBPFCmd(o), newPolicyCmd(o), newLabCmd(o), newObserveCmd(o))
	return root
}

// addFlags defines the global flags. The environment is read after
// parsing (etcdflags.SetFromEnv, for all of them), not as the flags'
// defaults, so that --help shows the real defaults and never a password.
func (o *options) addFlags(fs *pflag.FlagSet) {
	o.etcdFlags = etcdflags.Bind(fs, &o.etcd)
	fs.BoolVar(&o.embedded, "etcd-embedded", false,
		"instead of --etcd-endpoints, start an etcd inside meshctl with its data in --state-dir: one machine only (env MESHPLANE_ETCD_EMBEDDED)")
	fs.StringVar(&o.stateDir, "state-dir", defaultStateDir,
		"directory of the embedded etcd's data, used with --etcd-embedded and by demo (env MESHPLANE_STATE_DIR)")
	fs.StringVar(&o.clusterName, "cluster-name", "default", "name of the cluster: its key prefix in etcd (env MESHPLANE_CLUSTER_NAME)")
	fs.IntVar(&o.clusterID, "cluster-id", 1, "cluster ID, 1-255, unique in the mesh (env MESHPLANE_CLUSTER_ID)")
	fs.StringVar(&o.nodeName, "node-name", defaultNodeName(),
		"node name on the identity references meshctl makes (env MESHPLANE_NODE_NAME)")
}

// defaultStateDir is where --etcd-embedded keeps its data unless told.
const defaultStateDir = "/var/lib/meshplane"

// defaultNodeName is the host name in lowercase, as Kubernetes names nodes.
func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return strings.ToLower(h)
}

// validate checks the global flags without touching the network.
func (o *options) validate() error {
	if err := identity.ValidateClusterID(o.clusterID); err != nil {
		return fmt.Errorf("--cluster-id: %w", err)
	}
	if err := kvstore.ValidateClusterName(o.clusterName); err != nil {
		return fmt.Errorf("--cluster-name: %w", err)
	}
	if o.etcd.DialTimeout <= 0 {
		return fmt.Errorf("--etcd-dial-timeout %s: use a positive duration such as 5s", o.etcd.DialTimeout)
	}
	cfg := o.etcdConfig()
	if len(cfg.Endpoints) == 0 {
		// No etcd named: the commands that need one say so (connect);
		// demo and lab start their own.
		if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" || cfg.Username != "" || cfg.PasswordFile != "" {
			return fmt.Errorf("%w: TLS files or credentials were given but no --etcd-endpoints: name the etcd or drop them", kvstore.ErrConfig)
		}
		if o.embedded && o.stateDir == "" {
			return errors.New("--state-dir is empty: name a directory for the embedded etcd's data")
		}
		return nil
	}
	if o.embedded {
		return fmt.Errorf("%w: --etcd-embedded and --etcd-endpoints were both given: keep one", kvstore.ErrConfig)
	}
	return cfg.Validate()
}

// validateNode checks --node-name, for the commands that write references.
func (o *options) validateNode() error {
	if err := allocator.ValidateNodeName(o.nodeName); err != nil {
		return fmt.Errorf("--node-name: %w", err)
	}
	return nil
}

// endpointList returns the --etcd-endpoints.
func (o *options) endpointList() []string { return o.etcd.Endpoints }

// etcdConfig is the kvstore configuration the global flags describe.
func (o *options) etcdConfig() kvstore.Config { return o.etcd }

// connect opens the etcd the flags describe: --etcd-endpoints, or with
// --etcd-embedded one started in --state-dir, which closing the client
// stops. kvstore's errors already say what to check, so they are returned
// as they are.
func (o *options) connect(ctx context.Context) (*kvstore.Client, error) {
	if o.embedded {
		return embedded.Connect(ctx, o.stateDir, o.etcdConfig())
	}
	if len(o.endpointList()) == 0 {
		return nil, fmt.Errorf("%w: %s, or --etcd-embedded for a one-machine etcd in --state-dir", kvstore.ErrConfig, kvstore.NoEndpoints)
	}
	return kvstore.New(ctx, o.etcdConfig())
}

// keys is the key layout of --cluster-name (validated already).
func (o *options) keys() kvstore.Keys {
	k, _ := kvstore.NewKeys(o.clusterName)
	return k
}

// closeClient closes c, keeping the first error in *err.
func closeClient(c *kvstore.Client, err *error) {
	if cerr := c.Close(); cerr != nil && *err == nil {
		*err = fmt.Errorf("close etcd client: %w", cerr)
	}
}
