package kvstore

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config says how to reach etcd. Endpoints is required: a Client never
// starts an etcd of its own (package kvstore/embedded does, for meshctl,
// the lab and tests).
type Config struct {
	// Endpoints are the client URLs of the etcd cluster
	// (https://10.0.0.1:2379, http://127.0.0.1:2379, unix:///run/etcd.sock).
	// Required: empty is an ErrConfig error that says to pass
	// --etcd-endpoints.
	Endpoints []string

	// CAFile, CertFile and KeyFile configure TLS to an external etcd: the CA
	// bundle that signed the server certificate, and the client certificate
	// and key. CertFile and KeyFile go together. Empty means no TLS unless an
	// endpoint is https://, in which case the system roots are used.
	CAFile, CertFile, KeyFile string

	// Username and Password authenticate to etcd's RBAC. Empty means no
	// auth. Neither ever appears in an error or in String.
	Username, Password string
	// PasswordFile, if set, is a file whose first line is the password (a
	// trailing newline is not part of it); it goes with Username and
	// without Password.
	PasswordFile string

	// DialTimeout bounds connecting to etcd and the first request that
	// proves it answers. Zero means DefaultDialTimeout.
	DialTimeout time.Duration

	// RequestTimeout bounds one request made by New itself. Zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
}

const (
	// DefaultDialTimeout is used when Config.DialTimeout is zero.
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout is used when Config.RequestTimeout is zero.
	DefaultRequestTimeout = 10 * time.Second
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid etcd configuration")

// NoEndpoints is the message of the ErrConfig error Validate returns for a
// config without endpoints.
const NoEndpoints = "no etcd endpoints: pass --etcd-endpoints (or MESHPLANE_ETCD_ENDPOINTS) with the client URLs of the cluster's etcd, such as https://10.0.0.1:2379"

// Validate checks the config without touching the network or files.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: %s", ErrConfig, NoEndpoints)
	}
	for _, ep := range c.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" && u.Path == "" {
			return fmt.Errorf("%w: endpoint %q is not a URL: write it as http(s)://host:port or unix:///path", ErrConfig, RedactEndpoint(ep))
		}
		switch u.Scheme {
		case "http", "https", "unix", "unixs":
		default:
			return fmt.Errorf("%w: endpoint %q: scheme %q is not one of http, https, unix, unixs", ErrConfig, RedactEndpoint(ep), u.Scheme)
		}
		if u.User != nil {
			// etcd's client ignores them: refuse rather than connect
			// without the credentials the URL seems to give.
			return fmt.Errorf("%w: endpoint %s carries credentials, which etcd clients do not use: write it without them, and pass --etcd-user and the password in MESHPLANE_ETCD_PASSWORD or --etcd-password-file",
				ErrConfig, RedactEndpoint(ep))
		}
	}
	if c.Password != "" && c.PasswordFile != "" {
		return fmt.Errorf("%w: a password and a password file were both given: keep one (the file)", ErrConfig)
	}
	if c.PasswordFile != "" && c.Username == "" {
		return fmt.Errorf("%w: a password file was given without a user name (--etcd-user)", ErrConfig)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("%w: a client certificate needs both --etcd-cert and --etcd-key", ErrConfig)
	}
	if c.Password != "" && c.Username == "" {
		return fmt.Errorf("%w: a password was given without a user name (--etcd-user)", ErrConfig)
	}
	if c.DialTimeout < 0 || c.RequestTimeout < 0 {
		return fmt.Errorf("%w: timeouts must not be negative", ErrConfig)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	return c
}

// String describes where the config points, for messages.
func (c Config) String() string {
	if len(c.Endpoints) == 0 {
		return "etcd (no endpoints)"
	}
	eps := make([]string, len(c.Endpoints))
	for i, ep := range c.Endpoints {
		eps[i] = RedactEndpoint(ep)
	}
	return "etcd at " + strings.Join(eps, ",")
}

// RedactEndpoint returns an endpoint URL fit for messages and logs: a
// password in it is replaced by "xxxxx", also when the URL does not parse.
func RedactEndpoint(ep string) string {
	if u, err := url.Parse(ep); err == nil {
		return u.Redacted()
	}
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		scheme, rest = "", ep
	} else {
		scheme += "://"
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return ep
	}
	user, _, _ := strings.Cut(rest[:at], ":")
	return scheme + user + ":xxxxx" + rest[at:]
}
