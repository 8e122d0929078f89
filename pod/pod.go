package pod

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/meshplane/meshplane/labels"
)

// ErrInvalid is wrapped by every validation and decoding error.
var ErrInvalid = errors.New("invalid pod metadata")

// The IP protocol numbers a container port may use.
const (
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Pod is the value of pods/<node>/<namespace>/<name>: what an agent needs
// to know of a pod on its node.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID is the Kubernetes UID: a pod deleted and created again under the
	// same name has another one. Optional (the lab has none).
	UID string `json:"uid,omitempty"`
	// Node is the node the pod is scheduled on; it is also the key's first
	// segment.
	Node string `json:"node"`
	// Labels are the pod's Kubernetes labels.
	Labels map[string]string `json:"labels,omitempty"`
	// Ports are the container ports the pod's containers declare; named
	// ones resolve named ports in policies.
	Ports []Port `json:"ports,omitempty"`
	// ServiceAccount is the pod's service account name; empty means none
	// was given.
	ServiceAccount string `json:"serviceAccount,omitempty"`
}

// Port is a container port.
type Port struct {
	// Name is optional: an IANA_SVC_NAME (at most 15 lowercase letters,
	// digits and '-', with a letter).
	Name string `json:"name,omitempty"`
	Port uint16 `json:"port"`
	// Protocol is the IP protocol number: 6 (TCP), 17 (UDP) or 132 (SCTP).
	Protocol uint8 `json:"protocol"`
}

// Namespace is the value of namespaces/<name>.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

var (
	dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	portNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$`)
)

// isDNSSubdomain reports whether s is a DNS subdomain of at most 253
// characters (Kubernetes object and node names).
func isDNSSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		if !dnsLabelRE.MatchString(part) {
			return false
		}
	}
	return true
}

// validateLabels checks a Kubernetes label map with the rules of package
// labels, which the identity built from it must satisfy.
func validateLabels(where string, m map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := (labels.Label{Source: "k8s", Key: k, Value: m[k]}).Validate(); err != nil {
			return fmt.Errorf("%w: %s: label %s=%s: %w", ErrInvalid, where, k, m[k], err)
		}
	}
	return nil
}

// Validate checks a pod: a DNS-label namespace, DNS-subdomain name, node
// and service account, valid labels, and ports with a number, a known
// protocol and distinct valid names.
func (p Pod) Validate() error {
	if !dnsLabelRE.MatchString(p.Namespace) {
		return fmt.Errorf("%w: namespace %q: use a DNS label (at most 63 lowercase letters, digits and '-')", ErrInvalid, p.Namespace)
	}
	where := p.Namespace + "/" + p.Name
	if !isDNSSubdomain(p.Name) {
		return fmt.Errorf("%w: pod name %q: use a DNS subdomain (lowercase letters, digits, '-' and '.')", ErrInvalid, where)
	}
	if !isDNSSubdomain(p.Node) {
		return fmt.Errorf("%w: %s: node %q: use a DNS subdomain (lowercase letters, digits, '-' and '.')", ErrInvalid, where, p.Node)
	}
	if len(p.UID) > 128 || strings.ContainsFunc(p.UID, func(r rune) bool { return r < ' ' || r == 0x7f || r == '/' }) {
		return fmt.Errorf("%w: %s: UID %q: use at most 128 printable characters without '/'", ErrInvalid, where, p.UID)
	}
	if p.ServiceAccount != "" && !isDNSSubdomain(p.ServiceAccount) {
		return fmt.Errorf("%w: %s: service account %q: use a DNS subdomain", ErrInvalid, where, p.ServiceAccount)
	}
	if err := validateLabels(where, p.Labels); err != nil {
		return err
	}
	seen := make(map[string]bool, len(p.Ports))
	for _, pt := range p.Ports {
		switch {
		case pt.Port == 0:
			return fmt.Errorf("%w: %s: port 0: use 1-65535", ErrInvalid, where)
		case pt.Protocol != ProtoTCP && pt.Protocol != ProtoUDP && pt.Protocol != ProtoSCTP:
			return fmt.Errorf("%w: %s: port %d: protocol %d: use 6 (TCP), 17 (UDP) or 132 (SCTP)", ErrInvalid, where, pt.Port, pt.Protocol)
		case pt.Name != "" && (!portNameRE.MatchString(pt.Name) || !strings.ContainsFunc(pt.Name, isLetter)):
			return fmt.Errorf("%w: %s: port name %q: use at most 15 lowercase letters, digits and '-', with a letter", ErrInvalid, where, pt.Name)
		case pt.Name != "" && seen[pt.Name]:
			return fmt.Errorf("%w: %s: port name %q is used twice", ErrInvalid, where, pt.Name)
		}
		seen[pt.Name] = pt.Name != ""
	}
	return nil
}

func isLetter(r rune) bool { return r >= 'a' && r <= 'z' }

// Key is the key of p relative to the pods/ prefix:
// "<node>/<namespace>/<name>".
func (p Pod) Key() string { return p.Node + "/" + p.Namespace + "/" + p.Name }

// Owner is "<namespace>/<name>": the pod's name in its cluster, and its
// key relative to its node's prefix pods/<node>/.
func (p Pod) Owner() string { return p.Namespace + "/" + p.Name }

// Encode validates p and returns the value of its key.
func (p Pod) Encode() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(p)
}

// Equal reports whether p and o hold the same metadata (a nil and an
// empty label map or port list are the same).
func (p Pod) Equal(o Pod) bool {
	return p.Namespace == o.Namespace && p.Name == o.Name && p.UID == o.UID && p.Node == o.Node &&
		p.ServiceAccount == o.ServiceAccount && maps.Equal(p.Labels, o.Labels) && slices.Equal(p.Ports, o.Ports)
}

// Decode parses and validates the value of pods/<node>/<namespace>/<name>;
// key is "<node>/<namespace>/<name>" (relative to pods/), which the value
// must match.
func Decode(key string, value []byte) (Pod, error) {
	var p Pod
	if err := json.Unmarshal(value, &p); err != nil {
		return Pod{}, fmt.Errorf("%w: pod %s: %w", ErrInvalid, key, err)
	}
	if key != p.Key() {
		return Pod{}, fmt.Errorf("%w: pod key %s holds %s", ErrInvalid, key, p.Key())
	}
	if err := p.Validate(); err != nil {
		return Pod{}, err
	}
	return p, nil
}

// NodeDecoder returns a decoder for the keys under pods/<node>/, which are
// "<namespace>/<name>": what an agent that watches only its own node's
// pods decodes. The value must name node.
func NodeDecoder(node string) func(key string, value []byte) (Pod, error) {
	return func(key string, value []byte) (Pod, error) {
		return Decode(node+"/"+key, value)
	}
}

// Validate checks a namespace: a DNS-label name and valid labels.
func (n Namespace) Validate() error {
	if !dnsLabelRE.MatchString(n.Name) {
		return fmt.Errorf("%w: namespace %q: use a DNS label (at most 63 lowercase letters, digits and '-')", ErrInvalid, n.Name)
	}
	return validateLabels("namespace "+n.Name, n.Labels)
}

// Key is the key of n relative to the namespaces/ prefix: its name.
func (n Namespace) Key() string { return n.Name }

// Encode validates n and returns the value of its key.
func (n Namespace) Encode() ([]byte, error) {
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(n)
}

// Equal reports whether n and o hold the same metadata.
func (n Namespace) Equal(o Namespace) bool {
	return n.Name == o.Name && maps.Equal(n.Labels, o.Labels)
}

// DecodeNamespace parses and validates the value of namespaces/<name>;
// key is the name (relative to namespaces/), which the value must match.
func DecodeNamespace(key string, value []byte) (Namespace, error) {
	var n Namespace
	if err := json.Unmarshal(value, &n); err != nil {
		return Namespace{}, fmt.Errorf("%w: namespace %s: %w", ErrInvalid, key, err)
	}
	if key != n.Name {
		return Namespace{}, fmt.Errorf("%w: namespace key %s holds %s", ErrInvalid, key, n.Name)
	}
	if err := n.Validate(); err != nil {
		return Namespace{}, err
	}
	return n, nil
}
