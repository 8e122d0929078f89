package identity

import (
	"errors"
	"fmt"
	"strconv"
)

// ID is a security identity: a 24-bit number for a canonical label set.
//
// Bits 16-23 hold the cluster ID (1-255) and bits 0-15 the local ID
// (MinLocal-MaxLocal). IDs 1-MaxReserved carry no cluster bits and name the
// reserved identities (host, world, ...), which mean the same in every
// cluster.
type ID uint32

// ClusterID identifies a cluster in a mesh; valid values are MinClusterID-MaxClusterID.
type ClusterID uint8

const (
	// Unknown is the zero ID: no identity.
	Unknown ID = 0
	// MaxReserved is the highest reserved ID.
	MaxReserved ID = 255
	// MinLocal is the lowest local part of an allocated ID.
	MinLocal = 256
	// MaxLocal is the highest local part of an allocated ID.
	MaxLocal = 65535
	// LocalCount is how many identities one cluster can allocate.
	LocalCount = MaxLocal - MinLocal + 1
	// MinClusterID is the lowest cluster ID.
	MinClusterID = 1
	// MaxClusterID is the highest cluster ID.
	MaxClusterID = 255
	// Max is the highest valid ID.
	Max ID = 1<<24 - 1

	clusterShift = 16
)

// The reserved identities. Their numbers follow Cilium's, so operators who
// know one know the other.
const (
	Host          ID = 1
	World         ID = 2
	Unmanaged     ID = 3
	Health        ID = 4
	Init          ID = 5
	RemoteNode    ID = 6
	KubeAPIServer ID = 7
)

var reservedNames = map[ID]string{
	Host:          "host",
	World:         "world",
	Unmanaged:     "unmanaged",
	Health:        "health",
	Init:          "init",
	RemoteNode:    "remote-node",
	KubeAPIServer: "kube-apiserver",
}

// ErrInvalid is wrapped by every error about a malformed ID or cluster ID.
var ErrInvalid = errors.New("invalid identity")

// ValidateClusterID reports whether id is a usable cluster ID.
func ValidateClusterID(id int) error {
	if id < MinClusterID || id > MaxClusterID {
		return fmt.Errorf("%w: cluster ID %d is out of range: use a number from %d to %d, unique in the mesh",
			ErrInvalid, id, MinClusterID, MaxClusterID)
	}
	return nil
}

// New returns the ID of local ID local in cluster c.
func New(c ClusterID, local int) (ID, error) {
	if err := ValidateClusterID(int(c)); err != nil {
		return Unknown, err
	}
	if local < MinLocal || local > MaxLocal {
		return Unknown, fmt.Errorf("%w: local ID %d is out of range %d-%d", ErrInvalid, local, MinLocal, MaxLocal)
	}
	return ID(c)<<clusterShift | ID(local), nil
}

// Cluster returns the cluster bits of id (0 for reserved IDs).
func (id ID) Cluster() ClusterID { return ClusterID(id >> clusterShift) }

// Local returns the local part of id.
func (id ID) Local() int { return int(id & 0xffff) }

// IsReserved reports whether id is one of the reserved IDs 1-255.
func (id ID) IsReserved() bool { return id != Unknown && id <= MaxReserved }

// Validate reports whether id is a reserved ID or a well-formed allocated ID.
func (id ID) Validate() error {
	switch {
	case id == Unknown:
		return fmt.Errorf("%w: 0 is not an identity", ErrInvalid)
	case id.IsReserved():
		return nil
	case id > Max:
		return fmt.Errorf("%w: %d does not fit in 24 bits", ErrInvalid, uint32(id))
	case id.Cluster() == 0 || id.Local() < MinLocal:
		return fmt.Errorf("%w: %d is neither reserved (1-%d) nor cluster<<16|local with local %d-%d",
			ErrInvalid, uint32(id), MaxReserved, MinLocal, MaxLocal)
	}
	return nil
}

// String returns the decimal ID.
func (id ID) String() string { return strconv.FormatUint(uint64(id), 10) }

// Parse parses a decimal ID, or the name of a reserved identity, and validates it.
func Parse(s string) (ID, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		if id, ok := ReservedByName(s); ok {
			return id, nil
		}
		return Unknown, fmt.Errorf("%w: %q is not a number or a reserved identity name", ErrInvalid, s)
	}
	id := ID(n)
	if err := id.Validate(); err != nil {
		return Unknown, err
	}
	return id, nil
}

// ReservedName returns the name of a reserved identity.
func (id ID) ReservedName() (string, bool) {
	n, ok := reservedNames[id]
	return n, ok
}

// ReservedByName returns the reserved identity with the given name.
func ReservedByName(name string) (ID, bool) {
	for id, n := range reservedNames {
		if n == name {
			return id, true
		}
	}
	return Unknown, false
}

// Reserved returns the reserved identities in ascending order.
func Reserved() []ID {
	out := make([]ID, 0, len(reservedNames))
	for id := Host; id <= MaxReserved; id++ {
		if _, ok := reservedNames[id]; ok {
			out = append(out, id)
		}
	}
	return out
}
