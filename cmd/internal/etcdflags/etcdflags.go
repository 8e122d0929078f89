// Package etcdflags is the one definition of the --etcd-* flags that every
// meshplane binary (mesh-agent, meshctl, mesh-controlplane) offers, of
// their environment variables, and of the warnings about passwords.
//
// Use it in three steps around the flag set's Parse:
//
//	var cfg kvstore.Config
//	ef := etcdflags.Bind(fs, &cfg) // define the flags, bound to cfg
//	err := fs.Parse(args)           // the command line
//	err = ef.SetFromEnv()           // MESHPLANE_* for every flag not given
//	// ... a config file, if the binary reads one (keys are flag names)
//	for _, w := range ef.Warnings() { log it }
//	// cfg is ready for kvstore.New (which validates it)
//
// The environment variable of a flag is EnvName(flag): MESHPLANE_ and the
// flag's name in capitals with '-' as '_' (--etcd-ca is MESHPLANE_ETCD_CA).
// SetFromEnv covers every flag of the flag set given to Bind, the binary's
// own as well as etcd's, so a binary has one rule for all its flags: a flag
// on the command line beats the environment.
//
// The password: --etcd-password works but earns a warning (other users of
// the machine can read a command line); MESHPLANE_ETCD_PASSWORD is used
// only when no password file is named (--etcd-password-file or
// MESHPLANE_ETCD_PASSWORD_FILE), so a file always wins over the
// environment; both on the command line is kvstore.ErrConfig. A password
// file readable by other users earns a warning too.
//
// Flags and environment are read only in cmd/ (STYLE.md), which is why this
// package lives under cmd/internal.
package etcdflags

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/meshplane/meshplane/kvstore"
)

// The flags Bind defines.
const (
	FlagEndpoints    = "etcd-endpoints"
	FlagCA           = "etcd-ca"
	FlagCert         = "etcd-cert"
	FlagKey          = "etcd-key"
	FlagUser         = "etcd-user"
	FlagPassword     = "etcd-password"
	FlagPasswordFile = "etcd-password-file"
	FlagDialTimeout  = "etcd-dial-timeout"
)

// EnvName returns the environment variable of a flag: MESHPLANE_ and the
// name in capitals with '-' as '_'.
func EnvName(flag string) string {
	return "MESHPLANE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Flags is the etcd flag set of one binary, bound to a kvstore.Config.
type Flags struct {
	fs  *pflag.FlagSet
	cfg *kvstore.Config

	// passwordOnCommandLine is whether --etcd-password came from the
	// command line, recorded before the environment fills flags in.
	passwordOnCommandLine bool
}

// Bind defines the etcd flags on fs, bound to cfg: parsing fs writes them
// into cfg. What cfg holds when Bind is called are the flags' defaults; a
// zero DialTimeout defaults to kvstore.DefaultDialTimeout.
func Bind(fs *pflag.FlagSet, cfg *kvstore.Config) *Flags {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = kvstore.DefaultDialTimeout
	}
	env := func(usage, flag string) string { return usage + " (env " + EnvName(flag) + ")" }
	fs.Var((*endpoints)(&cfg.Endpoints), FlagEndpoints,
		env("etcd client URLs, comma-separated (https://10.0.0.1:2379,https://10.0.0.2:2379)", FlagEndpoints))
	fs.StringVar(&cfg.CAFile, FlagCA, cfg.CAFile, env("CA bundle that signed etcd's server certificate", FlagCA))
	fs.StringVar(&cfg.CertFile, FlagCert, cfg.CertFile, env("client certificate for etcd", FlagCert))
	fs.StringVar(&cfg.KeyFile, FlagKey, cfg.KeyFile, env("client key for etcd", FlagKey))
	fs.StringVar(&cfg.Username, FlagUser, cfg.Username, env("etcd user name", FlagUser))
	// The password's usage names no default, and the environment's value
	// is never a default: --help would print it.
	fs.StringVar(&cfg.Password, FlagPassword, "",
		"etcd password; other users of the machine can read it: prefer "+EnvName(FlagPassword)+" or --"+FlagPasswordFile)
	fs.StringVar(&cfg.PasswordFile, FlagPasswordFile, cfg.PasswordFile,
		env("file whose first line is the etcd password, mode 0600", FlagPasswordFile))
	fs.DurationVar(&cfg.DialTimeout, FlagDialTimeout, cfg.DialTimeout, env("how long to wait for etcd to answer", FlagDialTimeout))
	return &Flags{fs: fs, cfg: cfg}
}

// SetFromEnv sets every flag of the flag set given to Bind that the
// command line did not set from its environment variable (EnvName): etcd's
// flags and the binary's own. MESHPLANE_ETCD_PASSWORD counts only when no
// password file is named. Call it once, after Parse. A malformed variable
// is an error naming it; all of them are reported together.
func (f *Flags) SetFromEnv() error {
	f.passwordOnCommandLine = f.fs.Changed(FlagPassword)
	var errs []error
	set := func(fl *pflag.Flag) {
		name := EnvName(fl.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := f.fs.Set(fl.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w; fix it or unset it", name, v, err))
			}
		}
	}
	f.fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || fl.Name == FlagPassword {
			return
		}
		set(fl)
	})
	if pw := f.fs.Lookup(FlagPassword); !pw.Changed && !f.fs.Changed(FlagPasswordFile) {
		set(pw)
	}
	return errors.Join(errs...)
}

// Warning is something about the configuration that an operator should
// fix, though the binary can run with it. Msg is static; Attrs are slog
// key-value pairs. Neither ever holds a password.
type Warning struct {
	Msg   string
	Attrs []any
}

// String renders the warning on one line, for a CLI's stderr.
func (w Warning) String() string {
	var b strings.Builder
	b.WriteString(w.Msg)
	for i := 0; i+1 < len(w.Attrs); i += 2 {
		v := fmt.Sprint(w.Attrs[i+1])
		if strings.ContainsAny(v, " \t\"") {
			v = fmt.Sprintf("%q", v)
		}
		fmt.Fprintf(&b, " %v=%s", w.Attrs[i], v)
	}
	return b.String()
}

// Warnings returns what an operator should fix in the etcd flags: a
// password on the command line, a password file that other users can
// read. Call it after every source of flags (command line, SetFromEnv, a
// config file) has been applied.
func (f *Flags) Warnings() []Warning {
	var ws []Warning
	if f.passwordOnCommandLine {
		ws = append(ws, Warning{"--etcd-password on the command line: every user of this machine can read it (ps, /proc/<pid>/cmdline, shell history)",
			[]any{"fix", "pass it in " + EnvName(FlagPassword) + " or a file named by --" + FlagPasswordFile}})
	}
	if w, ok := ReadableByOthers("etcd password file", f.cfg.PasswordFile); ok {
		ws = append(ws, w)
	}
	return ws
}

// ReadableByOthers returns a warning when path, a secret described by what
// ("gossip key file"), is readable or writable by users other than its
// owner. An empty or missing path gives none.
func ReadableByOthers(what, path string) (Warning, bool) {
	if path == "" {
		return Warning{}, false
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o077 == 0 {
		return Warning{}, false
	}
	return Warning{what + " is readable by other users",
		[]any{"path", path, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()), "fix", "chmod 600 " + path}}, true
}

// endpoints is the --etcd-endpoints value: comma-separated URLs, spaces
// around them and empty items dropped. Setting it replaces the list, so
// the environment or a config file never adds to the command line's.
type endpoints []string

func (e *endpoints) String() string { return strings.Join(*e, ",") }
func (e *endpoints) Type() string   { return "urls" }

func (e *endpoints) Set(s string) error {
	var eps []string
	for ep := range strings.SplitSeq(s, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	*e = eps
	return nil
}
