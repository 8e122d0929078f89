package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	key := make([]byte, 16)
	ok := Config{Name: "node-1.example", BindAddr: "127.0.0.1", Keys: [][]byte{key}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tt := range []struct {
		name   string
		change func(*Config)
		want   string // in the error
	}{
		{"no name", func(c *Config) { c.Name = "" }, "name"},
		{"upper case name", func(c *Config) { c.Name = "Node-1" }, "lowercase"},
		{"name with a space", func(c *Config) { c.Name = "node 1" }, "lowercase"},
		{"name ends in a dash", func(c *Config) { c.Name = "node-" }, "ending"},
		{"long name", func(c *Config) { c.Name = strings.Repeat("a", 254) }, "1-253"},
		{"no bind address", func(c *Config) { c.BindAddr = "" }, "bind address"},
		{"bind host name", func(c *Config) { c.BindAddr = "localhost" }, "bind address"},
		{"bind everything", func(c *Config) { c.BindAddr = "0.0.0.0" }, "every interface"},
		{"bad advertise", func(c *Config) { c.AdvertiseAddr = "0.0.0.0" }, "advertise"},
		{"bad port", func(c *Config) { c.BindPort = 70000 }, "ports"},
		{"bad advertise port", func(c *Config) { c.AdvertisePort = -1 }, "ports"},
		{"no keys", func(c *Config) { c.Keys = nil }, "no keys"},
		{"keys and insecure", func(c *Config) { c.Insecure = true }, "both"},
		{"short key", func(c *Config) { c.Keys = [][]byte{key, make([]byte, 10)} }, "key 1 is 10 bytes"},
		{"bad meta", func(c *Config) { c.Meta.Version = "v1\n" }, "print"},
		{"negative interval", func(c *Config) { c.ProbeInterval = -time.Second }, "negative"},
		{"negative mult", func(c *Config) { c.SuspicionMult = -1 }, "negative"},
		{"timeout above interval", func(c *Config) { c.ProbeTimeout = time.Second }, "not shorter"},
		{"timeout equals interval", func(c *Config) { c.ProbeInterval, c.ProbeTimeout = time.Second, time.Second }, "not shorter"},
		{"negative grace", func(c *Config) { c.RestartGrace = -time.Second }, "restart grace -1s is negative"},
		{"long check timeout", func(c *Config) { c.CheckTimeout = time.Hour }, "check timeout 1h0m0s is too long"},
		{"huge max mult", func(c *Config) { c.SuspicionMaxTimeoutMult = 101 }, "1-100"},
		{"negative retention", func(c *Config) { c.DeadRetention = -time.Second }, "retention"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			c.Keys = [][]byte{key}
			tt.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error about %q", err, tt.want)
			}
			if _, nerr := New(c); nerr == nil || nerr.Error() != err.Error() {
				t.Fatalf("New = %v, want %v", nerr, err)
			}
		})
	}
	bad := ok
	bad.Meta.Version = strings.Repeat("v", 200)
	if err := bad.Validate(); !errors.Is(err, ErrMeta) {
		t.Errorf("meta error %v does not wrap ErrMeta", err)
	}
	unspec := ok
	unspec.BindAddr, unspec.AdvertiseAddr = "0.0.0.0", "10.0.0.1"
	if err := unspec.Validate(); err != nil {
		t.Errorf("unspecified bind with an advertise address: %v", err)
	}
}

func TestTimingError(t *testing.T) {
	t.Parallel()
	err := Config{Name: "n", BindAddr: "127.0.0.1", Insecure: true, Timing: Timing{ProbeInterval: 100 * time.Millisecond}}.Validate()
	var te *TimingError
	if !errors.As(err, &te) || te.Field != "ProbeTimeout" {
		t.Fatalf("Validate = %v, want a TimingError about ProbeTimeout", err)
	}
	if err := (Timing{}).Validate(); err != nil {
		t.Errorf("zero Timing: %v", err)
	}
}

func TestSuspicionTimeouts(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		members           int
		shortest, longest time.Duration
	}{
		// Fewer than SuspicionMult members: no confirmations are expected,
		// every suspicion lasts the shortest (doc.go, "Small clusters").
		{2, 1200 * time.Millisecond, 1200 * time.Millisecond},
		{3, 1200 * time.Millisecond, 1200 * time.Millisecond},
		{4, 1200 * time.Millisecond, 7200 * time.Millisecond},
		{100, 2400 * time.Millisecond, 14400 * time.Millisecond},
	} {
		s, l := Timing{}.SuspicionTimeouts(tt.members)
		if s != tt.shortest || l != tt.longest {
			t.Errorf("%d members: %s, %s; want %s, %s", tt.members, s, l, tt.shortest, tt.longest)
		}
	}
}

func TestStateString(t *testing.T) {
	t.Parallel()
	for s, want := range map[State]string{Alive: "alive", Suspect: "suspect", Dead: "dead", Left: "left",
		Unresponsive: "unresponsive", Restarting: "restarting", 0: "unknown(0)"} {
		if s.String() != want {
			t.Errorf("%d: %q, want %q", int(s), s, want)
		}
	}
	for _, s := range []State{Alive, Suspect, Unresponsive, Restarting} {
		if s.Down() {
			t.Errorf("%s is down", s)
		}
	}
	if !Dead.Down() || !Left.Down() {
		t.Error("dead or left is not down")
	}
}
