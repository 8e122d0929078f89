package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
)

// options are the global flags. New fills in their defaults from the
// environment; PersistentPreRunE checks them before any command runs.
type options struct {
	stdout, stderr io.Writer

	endpoints                 string // comma-separated
	caFile, certFile, keyFile string
	user, password            string
	passwordFile              string
	envPassword               string // MESHPLANE_ETCD_PASSWORD, used when neither --etcd-password nor --etcd-password-file is given
	dialTimeout               time.Duration
	clusterName               string
	clusterID                 int
	stateDir                  string
	nodeName                  string

	// envErr is a malformed MESHPLANE_* variable. It is reported when a
	// command runs, not by New, so that --help still works.
	envErr error
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

Without --etcd-endpoints, meshctl starts an embedded etcd with its data in
--state-dir; that directory must not be in use by a running agent.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			o.warn(cmd)
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w; see '%s --help'", err, c.CommandPath())
	})
	o.addFlags(root.PersistentFlags())
	root.AddCommand(newIdentityCmd(o), newIPAMCmd(o), newBenchCmd(o), newDemoCmd(o),
		newStatusCmd(o), newNodeCmd(o), newBPFCmd(o), newPolicyCmd(o), newLabCmd(o), newObserveCmd(o))
	return root
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	env := &envReader{}
	fs.StringVar(&o.endpoints, "etcd-endpoints", env.str("MESHPLANE_ETCD_ENDPOINTS", ""),
		"etcd client URLs, comma-separated; empty starts an embedded etcd in --state-dir (env MESHPLANE_ETCD_ENDPOINTS)")
	fs.StringVar(&o.caFile, "etcd-ca", env.str("MESHPLANE_ETCD_CA", ""), "CA bundle that signed etcd's server certificate (env MESHPLANE_ETCD_CA)")
	fs.StringVar(&o.certFile, "etcd-cert", env.str("MESHPLANE_ETCD_CERT", ""), "client certificate for etcd (env MESHPLANE_ETCD_CERT)")
	fs.StringVar(&o.keyFile, "etcd-key", env.str("MESHPLANE_ETCD_KEY", ""), "client key for etcd (env MESHPLANE_ETCD_KEY)")
	fs.StringVar(&o.user, "etcd-user", env.str("MESHPLANE_ETCD_USER", ""), "etcd user name (env MESHPLANE_ETCD_USER)")
	// The password from the environment is not made the flag's default,
	// which --help would print.
	o.envPassword = env.str("MESHPLANE_ETCD_PASSWORD", "")
	fs.StringVar(&o.password, "etcd-password", "", "etcd password; other users of the machine can read it: prefer MESHPLANE_ETCD_PASSWORD or --etcd-password-file")
	fs.StringVar(&o.passwordFile, "etcd-password-file", env.str("MESHPLANE_ETCD_PASSWORD_FILE", ""),
		"file whose first line is the etcd password, mode 0600 (env MESHPLANE_ETCD_PASSWORD_FILE)")
	fs.DurationVar(&o.dialTimeout, "etcd-dial-timeout", env.duration("MESHPLANE_ETCD_DIAL_TIMEOUT", kvstore.DefaultDialTimeout),
		"how long to wait for etcd to answer (env MESHPLANE_ETCD_DIAL_TIMEOUT)")
	fs.StringVar(&o.clusterName, "cluster-name", env.str("MESHPLANE_CLUSTER_NAME", "default"), "name of the cluster: its key prefix in etcd (env MESHPLANE_CLUSTER_NAME)")
	fs.IntVar(&o.clusterID, "cluster-id", env.int("MESHPLANE_CLUSTER_ID", 1), "cluster ID, 1-255, unique in the mesh (env MESHPLANE_CLUSTER_ID)")
	fs.StringVar(&o.stateDir, "state-dir", env.str("MESHPLANE_STATE_DIR", kvstore.DefaultStateDir),
		"directory of the embedded etcd's data, used without --etcd-endpoints (env MESHPLANE_STATE_DIR)")
	fs.StringVar(&o.nodeName, "node-name", env.str("MESHPLANE_NODE_NAME", defaultNodeName()),
		"node name on the identity references meshctl makes (env MESHPLANE_NODE_NAME)")
	o.envErr = env.err
}

// defaultNodeName is the host name in lowercase, as Kubernetes names nodes.
func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return strings.ToLower(h)
}

// envReader reads flag defaults from the environment, keeping the first
// malformed value's error.
type envReader struct{ err error }

func (e *envReader) str(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func (e *envReader) duration(name string, def time.Duration) time.Duration {
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil && e.err == nil {
		e.err = fmt.Errorf("%s=%q is not a duration: write it like 5s, or unset it", name, v)
	}
	if err != nil {
		return def
	}
	return d
}

func (e *envReader) int(name string, def int) int {
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil && e.err == nil {
		e.err = fmt.Errorf("%s=%q is not a number: set it to a number, or unset it", name, v)
	}
	if err != nil {
		return def
	}
	return n
}

// validate checks the global flags without touching the network.
func (o *options) validate() error {
	if o.envErr != nil {
		return o.envErr
	}
	if err := identity.ValidateClusterID(o.clusterID); err != nil {
		return fmt.Errorf("--cluster-id: %w", err)
	}
	if err := kvstore.ValidateClusterName(o.clusterName); err != nil {
		return fmt.Errorf("--cluster-name: %w", err)
	}
	if o.dialTimeout <= 0 {
		return fmt.Errorf("--etcd-dial-timeout %s: use a positive duration such as 5s", o.dialTimeout)
	}
	if o.stateDir == "" && len(o.endpointList()) == 0 {
		return fmt.Errorf("--state-dir is empty: name a directory for the embedded etcd, or pass --etcd-endpoints")
	}
	return o.etcdConfig().Validate()
}

// warn prints to stderr what in the global flags an operator should fix,
// though the command can run with it. The password itself is never shown.
func (o *options) warn(cmd *cobra.Command) {
	if f := cmd.Flags().Lookup("etcd-password"); f != nil && f.Changed {
		fmt.Fprintln(o.stderr, "meshctl: warning: --etcd-password on the command line: every user of this machine can read it (ps, shell history); pass it in MESHPLANE_ETCD_PASSWORD or a file named by --etcd-password-file")
	}
	if o.passwordFile != "" {
		if fi, err := os.Stat(o.passwordFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			fmt.Fprintf(o.stderr, "meshctl: warning: etcd password file %s is readable by other users (mode %04o): chmod 600 %s\n", o.passwordFile, fi.Mode().Perm(), o.passwordFile)
		}
	}
}

// validateNode checks --node-name, for the commands that write references.
func (o *options) validateNode() error {
	if err := allocator.ValidateNodeName(o.nodeName); err != nil {
		return fmt.Errorf("--node-name: %w", err)
	}
	return nil
}

func (o *options) endpointList() []string {
	var eps []string
	for ep := range strings.SplitSeq(o.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	return eps
}

// etcdConfig is the kvstore configuration the global flags describe. The
// environment's password counts only when no flag names one.
func (o *options) etcdConfig() kvstore.Config {
	password := o.password
	if password == "" && o.passwordFile == "" {
		password = o.envPassword
	}
	return kvstore.Config{
		Endpoints:    o.endpointList(),
		CAFile:       o.caFile,
		CertFile:     o.certFile,
		KeyFile:      o.keyFile,
		Username:     o.user,
		Password:     password,
		PasswordFile: o.passwordFile,
		DialTimeout:  o.dialTimeout,
		StateDir:     o.stateDir,
	}
}

// connect opens the etcd the flags describe. kvstore's errors already say
// what to check, so they are returned as they are.
func (o *options) connect(ctx context.Context) (*kvstore.Client, error) {
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
