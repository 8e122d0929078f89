package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// PluginType is the plugin's "type" in a network configuration: the name
// of its binary in the runtime's CNI bin directory.
const PluginType = "mesh-cni"

// DefaultSocket is mesh-agent's API socket. It is nodeagent.DefaultAPISocket,
// written again here because the plugin must not link the agent (see
// doc.go); a test holds the two together.
const DefaultSocket = "/var/run/meshplane/agent.sock"

// DefaultTimeout bounds each command. It is longer than the agent's
// default wait for a pod's labels (nodeagent.DefaultPodMetadataWait, 30s),
// so that the runtime gets the agent's reason, not a timeout.
const DefaultTimeout = 60 * time.Second

// ErrConfig is wrapped by the errors of a network configuration the
// plugin cannot use.
var ErrConfig = errors.New("mesh-cni: invalid network configuration")

// NetConf is the plugin's network configuration: its entry in the
// conflist, as the runtime passes it on stdin.
type NetConf struct {
	types.PluginConf
	// Socket is mesh-agent's API socket; empty means DefaultSocket.
	Socket string `json:"socket,omitempty"`
	// LogFile, if set, gets one line per command (JSON): what it was
	// asked, how long it took, and the error if any.
	LogFile string `json:"logFile,omitempty"`
	// Timeout bounds each command, e.g. "60s"; empty means
	// DefaultTimeout. Keep it above the agent's --pod-metadata-wait.
	Timeout Duration `json:"timeout,omitempty"`
}

// Duration is a time.Duration written as a string ("60s") in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string such as "90s" or "2m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timeout: write a duration string such as \"60s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("timeout %q: write a duration such as \"60s\"", s)
	}
	*d = Duration(v)
	return nil
}

// ParseConf reads a network configuration and fills its defaults.
func ParseConf(stdin []byte) (NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return NetConf{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if !filepath.IsAbs(c.Socket) {
		return NetConf{}, fmt.Errorf("%w: socket %q: write the absolute path of mesh-agent's --api-socket", ErrConfig, c.Socket)
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return NetConf{}, fmt.Errorf("%w: logFile %q: write an absolute path", ErrConfig, c.LogFile)
	}
	switch {
	case c.Timeout == 0:
		c.Timeout = Duration(DefaultTimeout)
	case c.Timeout < 0:
		return NetConf{}, fmt.Errorf("%w: timeout %s is negative: write a positive duration such as \"60s\"", ErrConfig, time.Duration(c.Timeout))
	}
	return c, nil
}

// podRef is the pod an attachment is for.
type podRef struct {
	namespace, name string
}

func (p podRef) String() string { return p.namespace + "/" + p.name }

// parseArgs reads the pod from CNI_ARGS ("K8S_POD_NAMESPACE=...;
// K8S_POD_NAME=...;..."); other keys are ignored, as with IgnoreUnknown.
// ok is false when they do not name a pod (a DEL may come without them).
func parseArgs(args string) (_ podRef, ok bool, _ error) {
	var p podRef
	if args == "" {
		return p, false, nil
	}
	for pair := range strings.SplitSeq(args, ";") {
		k, v, found := strings.Cut(pair, "=")
		if !found {
			return podRef{}, false, fmt.Errorf("CNI_ARGS %q: pair %q is not KEY=VALUE", args, pair)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.namespace = v
		case "K8S_POD_NAME":
			p.name = v
		}
	}
	return p, p.namespace != "" && p.name != "", nil
}
