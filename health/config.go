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

// Defaults of Config and Timing. doc.go explains how they were chosen.
const (
	// DefaultBindPort is the gossip port agents use unless told otherwise
	// (memberlist's and Serf's customary port). Config.BindPort zero picks a
	// free port instead.
	DefaultBindPort = 7946

	DefaultProbeInterval           = 300 * time.Millisecond
	DefaultProbeTimeout            = 150 * time.Millisecond
	DefaultGossipInterval          = 100 * time.Millisecond
	DefaultSuspicionMult           = 4
	DefaultSuspicionMaxTimeoutMult = 6
	DefaultAwarenessMaxMultiplier  = 4
	DefaultRestartGrace            = 2 * time.Minute
	DefaultCheckTimeout            = time.Second
	DefaultDeadRetention           = 10 * time.Minute

	// retransmitMult: each member retransmits a message it learns
	// retransmitMult × ceil(log10(members+1)) times (memberlist's default
	// is 4; see doc.go).
	retransmitMult = 6

	// pushPullInterval is how often a member exchanges its full state with
	// a random other (memberlist scales it up above 32 members), which heals
	// what gossip missed (memberlist's default is 30 s).
	pushPullInterval = 15 * time.Second

	// maxRecheck is the longest wait between two checks of a member that
	// stays unresponsive or restarting (see doc.go, "Confirmation").
	maxRecheck = 5 * time.Second
)

// Limits of Timing, so that a typo (a missing unit, an extra zero) is an
// error rather than a failure detector that never fires.
const (
	maxInterval     = time.Minute
	maxMult         = 100
	maxRestartGrace = 24 * time.Hour
)

// Timing is the failure detector's timing: memberlist's probes and
// suspicion (SWIM with Lifeguard), and what this package adds on top,
// the direct check of a member declared dead and the grace of a member
// that announced a restart. Every zero field means its default; doc.go
// ("Tuning") has the arithmetic behind the defaults.
type Timing struct {
	// ProbeInterval is how often the member probes another one. Zero
	// means DefaultProbeInterval (300ms).
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for its ack before
	// asking other members to probe too; less than ProbeInterval. Zero
	// means DefaultProbeTimeout (150ms).
	ProbeTimeout time.Duration
	// GossipInterval is how often the member sends queued messages to
	// random others. Zero means DefaultGossipInterval (100ms).
	GossipInterval time.Duration
	// SuspicionMult scales the suspicion timeout: a suspect that does not
	// refute within SuspicionMult × max(1, log10(members)) × ProbeInterval
	// (more without confirmations from other members) is declared dead by
	// memberlist. Zero means DefaultSuspicionMult (4).
	SuspicionMult int
	// SuspicionMaxTimeoutMult is Lifeguard's bound on a suspicion that no
	// other member confirms, as a multiple of the shortest timeout: a
	// member that one, perhaps slow, prober accuses gets that much longer
	// to refute. Clusters of fewer than SuspicionMult members expect no
	// confirmations and use the shortest timeout. Zero means
	// DefaultSuspicionMaxTimeoutMult (6).
	SuspicionMaxTimeoutMult int
	// AwarenessMaxMultiplier is Lifeguard's bound on stretching the probes
	// of a member that finds itself slow: its health score stays below it,
	// and each point adds one ProbeInterval to a probe's deadline (so to
	// the time a failing probe takes). A member whose probes fail with no
	// other member to blame it on (a cluster of two: nobody sends nacks)
	// raises its own score, so a crash there slows the detection of the
	// next one; the bound caps that (doc.go, "Tuning"). 1 disables the
	// stretching. Zero means DefaultAwarenessMaxMultiplier (4; memberlist's
	// is 8).
	AwarenessMaxMultiplier int
	// CheckTimeout bounds the direct check of a member memberlist declared
	// dead: a TCP handshake with its gossip port. A handshake (the node's
	// kernel answers, so only the agent is slow) keeps the member
	// Unresponsive; a reset or no answer within CheckTimeout makes it
	// Dead. Zero means DefaultCheckTimeout (1s).
	CheckTimeout time.Duration
	// RestartGrace is how long a member that announced a restart
	// (AnnounceRestart) stays Restarting before it is Dead, unless it
	// comes back first or its node stops answering at all. Zero means
	// DefaultRestartGrace (2m).
	RestartGrace time.Duration
}

// TimingError is a Timing field Validate refuses.
type TimingError struct {
	// Field is the Timing field's name, such as "ProbeTimeout".
	Field string
	// Msg says what is wrong and what to use.
	Msg string
}

func (e *TimingError) Error() string { return "gossip timing: " + e.Msg }

// Validate checks t. Its errors are *TimingError.
func (t Timing) Validate() error {
	for _, f := range []struct {
		field, what string
		v, max      time.Duration
	}{
		{"ProbeInterval", "probe interval", t.ProbeInterval, maxInterval},
		{"ProbeTimeout", "probe timeout", t.ProbeTimeout, maxInterval},
		{"GossipInterval", "gossip interval", t.GossipInterval, maxInterval},
		{"CheckTimeout", "check timeout", t.CheckTimeout, maxInterval},
		{"RestartGrace", "restart grace", t.RestartGrace, maxRestartGrace},
	} {
		switch {
		case f.v < 0:
			return &TimingError{f.field, fmt.Sprintf("%s %s is negative: use a positive duration up to %s, or 0 for the default", f.what, f.v, f.max)}
		case f.v > f.max:
			return &TimingError{f.field, fmt.Sprintf("%s %s is too long: use at most %s, or 0 for the default", f.what, f.v, f.max)}
		}
	}
	for _, f := range []struct {
		field, what string
		v           int
	}{
		{"SuspicionMult", "suspicion multiplier", t.SuspicionMult},
		{"SuspicionMaxTimeoutMult", "suspicion max timeout multiplier", t.SuspicionMaxTimeoutMult},
		{"AwarenessMaxMultiplier", "awareness max multiplier", t.AwarenessMaxMultiplier},
	} {
		if f.v < 0 || f.v > maxMult {
			return &TimingError{f.field, fmt.Sprintf("%s %d is out of range (negative or too large): use 1-%d, or 0 for the default", f.what, f.v, maxMult)}
		}
	}
	t = t.WithDefaults()
	if t.ProbeTimeout >= t.ProbeInterval {
		return &TimingError{"ProbeTimeout", fmt.Sprintf("probe timeout %s is not shorter than the probe interval %s", t.ProbeTimeout, t.ProbeInterval)}
	}
	return nil
}

// WithDefaults returns t with every zero field set to its default.
func (t Timing) WithDefaults() Timing {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&t.ProbeInterval, DefaultProbeInterval)
	def(&t.ProbeTimeout, DefaultProbeTimeout)
	def(&t.GossipInterval, DefaultGossipInterval)
	def(&t.CheckTimeout, DefaultCheckTimeout)
	def(&t.RestartGrace, DefaultRestartGrace)
	if t.SuspicionMult == 0 {
		t.SuspicionMult = DefaultSuspicionMult
	}
	if t.SuspicionMaxTimeoutMult == 0 {
		t.SuspicionMaxTimeoutMult = DefaultSuspicionMaxTimeoutMult
	}
	if t.AwarenessMaxMultiplier == 0 {
		t.AwarenessMaxMultiplier = DefaultAwarenessMaxMultiplier
	}
	return t
}

// SuspicionTimeouts returns how long a suspect in a cluster of that many
// members has to refute before memberlist declares it dead, as memberlist
// computes it: shortest = SuspicionMult × max(1, log10(members)) ×
// ProbeInterval, when SuspicionMult-2 other members confirmed the
// suspicion; longest = SuspicionMaxTimeoutMult × shortest, when nobody
// did (Lifeguard: a suspicion only one, perhaps slow, member holds gets
// longer). In a cluster of fewer than SuspicionMult members memberlist
// expects no confirmations and every suspicion lasts the shortest: then
// longest is shortest too. Zero fields mean their defaults.
func (t Timing) SuspicionTimeouts(members int) (shortest, longest time.Duration) {
	t = t.WithDefaults()
	scale := math.Max(1, math.Log10(math.Max(1, float64(members))))
	shortest = time.Duration(float64(t.SuspicionMult) * scale * float64(t.ProbeInterval))
	if members-2 < t.SuspicionMult-2 {
		return shortest, shortest
	}
	return shortest, time.Duration(t.SuspicionMaxTimeoutMult) * shortest
}

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

	// Timing is the failure detector's timing; zero fields mean their
	// defaults.
	Timing

	// DeadRetention is how long a dead or left member stays in Members after
	// it changed last. Optional: zero means DefaultDeadRetention.
	DeadRetention time.Duration

	// Notify, when set, receives every member's state after each change:
	// join (Alive), suspicion (Suspect), a death memberlist declared that
	// the direct check did not confirm (Unresponsive), an announced
	// restart (Restarting), a confirmed death (Dead), a leave (Left), a
	// return to Alive, and meta and address updates, this member included.
	// Only Dead and Left (State.Down) mean the member is gone: act on
	// those, and treat the others as in the cluster.
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
	if c.DeadRetention < 0 {
		return errors.New("gossip config: negative dead retention: use a positive value, or zero for the default")
	}
	if err := c.Timing.Validate(); err != nil {
		return err
	}
	return nil
}

// labelPrefix starts the memberlist label of a cluster's packets.
const labelPrefix = "meshplane/"

// WithDefaults returns c with every zero optional field set to its default.
func (c Config) WithDefaults() Config {
	c.Timing = c.Timing.WithDefaults()
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
