package health

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// Defaults of Config. doc.go explains how they were chosen.
const (
	// DefaultBindPort is the gossip port agents use unless told otherwise
	// (memberlist's and Serf's customary port). Config.BindPort zero picks a
	// free port instead.
	DefaultBindPort = 7946

	DefaultProbeInterval  = 300 * time.Millisecond
	DefaultProbeTimeout   = 150 * time.Millisecond
	DefaultGossipInterval = 100 * time.Millisecond
	DefaultSuspicionMult  = 4
	DefaultDeadRetention  = 10 * time.Minute

	// suspicionMaxTimeoutMult bounds how long a suspicion nobody else
	// confirms may last, as a multiple of the minimum (Lifeguard: a member
	// that one slow prober accuses gets this much longer to refute).
	suspicionMaxTimeoutMult = 6

	// retransmitMult: each member retransmits a message it learns
	// retransmitMult × ceil(log10(members+1)) times (memberlist's default
	// is 4; see doc.go).
	retransmitMult = 6

	// pushPullInterval is how often a member exchanges its full state with
	// a random other (memberlist scales it up above 32 members), which heals
	// what gossip missed (memberlist's default is 30 s).
	pushPullInterval = 15 * time.Second

	// awarenessMaxMultiplier is Lifeguard's limit on stretching the probe
	// interval of a member that finds itself slow (memberlist's default).
	awarenessMaxMultiplier = 8
)

// Config configures a Gossip. It is passed by value; New calls Validate.
// Fields documented as optional mean their default when zero.
type Config struct {
	// Name is the member's name, unique in the cluster: the node's name.
	// Lowercase letters, digits, '-' and '.', starting and ending with a
	// letter or digit, at most 253 bytes (a Kubernetes node name). Required.
	Name string

	// BindAddr is the IP address the UDP and TCP sockets bind to: the node's
	// address (tests use 127.0.0.1). Required: there is no default, because
	// binding every interface would put gossip on pod-facing interfaces
	// too. An unspecified address (0.0.0.0, ::) needs AdvertiseAddr.
	BindAddr string
	// BindPort is the UDP and TCP port. Zero picks a free port (tests and
	// benchmarks); agents pass DefaultBindPort unless told otherwise.
	BindPort int
	// AdvertiseAddr and AdvertisePort are the address and port the other
	// members are told to use, when they differ from the bound ones (NAT).
	// Optional: empty and zero mean BindAddr and the bound port.
	AdvertiseAddr string
	AdvertisePort int

	// Keys is the cluster keyring: AES keys of 16, 24 or 32 bytes. The first
	// (primary) encrypts what this member sends; every key is tried on what
	// it receives, so keys rotate without downtime (see SetKeys). Members
	// with no key in common cannot exchange anything. Required unless
	// Insecure is set. New copies the keys.
	Keys [][]byte
	// Insecure runs without a keyring: no encryption and no authentication,
	// so anyone who reaches the port can join or declare members dead. For
	// tests and demos only; it excludes Keys.
	Insecure bool

	// Meta is what this member tells the others about itself. Optional;
	// UpdateMeta changes it later (but not Meta.Cluster).
	Meta Meta

	// ProbeInterval is how often the member probes another one. Optional:
	// zero means DefaultProbeInterval.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for its ack before
	// asking IndirectChecks other members to probe too; less than
	// ProbeInterval. Optional: zero means DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// GossipInterval is how often the member sends queued messages to
	// random others. Optional: zero means DefaultGossipInterval.
	GossipInterval time.Duration
	// SuspicionMult scales the suspicion timeout: a suspect that does not
	// refute within SuspicionMult × max(1, log10(members)) × ProbeInterval
	// (more without confirmations from other members) is declared dead.
	// Optional: zero means DefaultSuspicionMult.
	SuspicionMult int
	// DeadRetention is how long a dead or left member stays in Members after
	// it changed last. Optional: zero means DefaultDeadRetention.
	DeadRetention time.Duration

	// Notify, when set, receives every member's state after each change:
	// join (Alive), suspicion (Suspect), death (Dead), leave (Left), a
	// return to Alive, and meta and address updates, this member included.
	// One goroutine owned by the Gossip calls it, never concurrently. Changes
	// of one member are coalesced while Notify runs, so a slow Notify sees
	// the latest state of each member, not a backlog; it may miss a state
	// that did not last (Suspect, then Dead). Notify must return: Close
	// waits for it, so Notify must not call Close.
	Notify func(Member)

	// Logger receives memberlist's log lines at their level (memberlist's
	// [ERR], nearly always trouble it recovers from, at Warn). Optional:
	// nil discards them.
	Logger *slog.Logger
}

// Validate checks c without touching the network.
func (c Config) Validate() error {
	if err := validateName(c.Name); err != nil {
		return fmt.Errorf("gossip config: name: %w", err)
	}
	bind, err := netip.ParseAddr(c.BindAddr)
	if err != nil || bind.Zone() != "" {
		return fmt.Errorf("gossip config: bind address %q: use the node's IP address, such as 10.0.0.5 (127.0.0.1 in tests)", c.BindAddr)
	}
	if bind.IsUnspecified() && c.AdvertiseAddr == "" {
		return fmt.Errorf("gossip config: bind address %s binds every interface: bind the node's IP, or set an advertise address", c.BindAddr)
	}
	if c.AdvertiseAddr != "" {
		if a, err := netip.ParseAddr(c.AdvertiseAddr); err != nil || a.IsUnspecified() || a.Zone() != "" {
			return fmt.Errorf("gossip config: advertise address %q: use an IP address the other members reach", c.AdvertiseAddr)
		}
	}
	if c.BindPort < 0 || c.BindPort > 65535 || c.AdvertisePort < 0 || c.AdvertisePort > 65535 {
		return fmt.Errorf("gossip config: ports %d and %d: use 1-65535, or 0 (bind: a free port; advertise: the bound one)", c.BindPort, c.AdvertisePort)
	}
	switch {
	case c.Insecure && len(c.Keys) > 0:
		return errors.New("gossip config: keys and insecure both set: drop one")
	case !c.Insecure && len(c.Keys) == 0:
		return errors.New("gossip config: no keys: give the cluster's gossip key (16, 24 or 32 random bytes), or set insecure for a test")
	}
	for i, k := range c.Keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("gossip config: key %d is %d bytes: use an AES key of 16, 24 or 32 bytes", i, len(k))
		}
	}
	if err := c.Meta.Validate(); err != nil {
		return fmt.Errorf("gossip config: meta: %w", err)
	}
	if len(c.Meta.Cluster) > memberlist.LabelMaxSize-len(labelPrefix) {
		return fmt.Errorf("gossip config: cluster name %q is too long for a gossip label", c.Meta.Cluster)
	}
	if c.ProbeInterval < 0 || c.ProbeTimeout < 0 || c.GossipInterval < 0 || c.DeadRetention < 0 || c.SuspicionMult < 0 {
		return errors.New("gossip config: negative interval, timeout, retention or suspicion multiplier: use a positive value, or zero for the default")
	}
	c = c.WithDefaults()
	if c.ProbeTimeout >= c.ProbeInterval {
		return fmt.Errorf("gossip config: probe timeout %s is not shorter than the probe interval %s", c.ProbeTimeout, c.ProbeInterval)
	}
	return nil
}

// SuspicionTimeouts returns how long a suspect in a cluster of that many
// members has to refute before it is declared dead, as memberlist computes
// it: shortest = SuspicionMult × max(1, log10(members)) × ProbeInterval,
// when SuspicionMult-2 other members confirmed the suspicion; longest =
// suspicionMaxTimeoutMult × shortest, when nobody did (Lifeguard: a
// suspicion only one, perhaps slow, member holds gets longer). Zero fields
// mean their defaults.
func (c Config) SuspicionTimeouts(members int) (shortest, longest time.Duration) {
	c = c.WithDefaults()
	scale := math.Max(1, math.Log10(math.Max(1, float64(members))))
	shortest = time.Duration(float64(c.SuspicionMult) * scale * float64(c.ProbeInterval))
	return shortest, suspicionMaxTimeoutMult * shortest
}

// labelPrefix starts the memberlist label of a cluster's packets.
const labelPrefix = "meshplane/"

// WithDefaults returns c with every zero optional field set to its default.
func (c Config) WithDefaults() Config {
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.GossipInterval == 0 {
		c.GossipInterval = DefaultGossipInterval
	}
	if c.SuspicionMult == 0 {
		c.SuspicionMult = DefaultSuspicionMult
	}
	if c.DeadRetention == 0 {
		c.DeadRetention = DefaultDeadRetention
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// validateName checks a member name: a Kubernetes node name (an RFC 1123
// subdomain). Log lines name members, and the suspect parser relies on
// names without spaces.
func validateName(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%q: use 1-253 characters, such as the node's name", name)
	}
	for i := range len(name) {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '.' || (i == 0 || i == len(name)-1) && !alnum {
			return fmt.Errorf("%q: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit", name)
		}
	}
	return nil
}
