package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/meshplane/meshplane/identity"
)

// Format is the record format this package writes and reads. A record of
// a higher format was written by a newer meshplane whose record this one
// cannot judge; Decode refuses it.
const Format = 1

// ErrInvalid is wrapped by every validation and decoding error.
var ErrInvalid = errors.New("invalid cluster record")

// Record is the value of cluster: the cluster's name and ID.
type Record struct {
	// Name is the cluster's name, also its key prefix in etcd
	// (/meshplane/v1/<name>/): a DNS label of at most 32 characters
	// (ValidateName).
	Name string `json:"name"`
	// ID is the cluster's ID in a mesh, 1-255 (identity.ValidateClusterID).
	ID int `json:"id"`
	// Created is when the record was written, for people; nothing compares
	// it. Zero means not known.
	Created time.Time `json:"created,omitzero"`
	// Format is the record's format: Format when written by this version.
	Format int `json:"format"`
}

// New returns the record a first writer stores for cluster name with ID
// id, created at now (in UTC, to the second).
func New(name string, id int, now time.Time) Record {
	return Record{Name: name, ID: id, Created: now.UTC().Truncate(time.Second), Format: Format}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$`)

// ValidateName checks a cluster name: a DNS label of at most 32
// characters. It is the rule of every cluster name (kvstore.NewKeys
// applies it to the key prefix).
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("cluster name %q: use 1-32 lowercase letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// Validate reports whether r can be stored: a valid name and ID, and this
// package's format.
func (r Record) Validate() error {
	if err := ValidateName(r.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := identity.ValidateClusterID(r.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	switch {
	case r.Format > Format:
		return fmt.Errorf("%w: format %d is newer than this meshplane reads (%d): upgrade meshctl, mesh-agent and mesh-controlplane to the version that wrote it", ErrInvalid, r.Format, Format)
	case r.Format < 1:
		return fmt.Errorf("%w: format %d: want 1-%d (a record without a format was not written by meshplane)", ErrInvalid, r.Format, Format)
	}
	return nil
}

// Encode returns the record as stored in etcd (JSON); it refuses an
// invalid one.
func (r Record) Encode() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(r)
}

// Decode parses and validates the value of cluster. Its errors wrap
// ErrInvalid.
func Decode(value []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(value, &r); err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := r.Validate(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// Check compares the stored record r with a configuration's name and ID:
// nil when they agree, else a *MismatchError for the first field that
// differs (the name first).
func (r Record) Check(name string, id int) error {
	if r.Name != name {
		return &MismatchError{Field: FieldName, Stored: r.Name, Configured: name}
	}
	if r.ID != id {
		return &MismatchError{Field: FieldID, Stored: strconv.Itoa(r.ID), Configured: strconv.Itoa(id)}
	}
	return nil
}

// The fields a MismatchError names.
const (
	FieldName = "name"
	FieldID   = "id"
)

// MismatchError says that a cluster's record and a process's
// configuration disagree on a field: the process is pointed at another
// cluster's etcd, or configured with another cluster's name or ID. The
// process must not start: its identities would carry the wrong cluster
// bits, or its keys land in another cluster.
type MismatchError struct {
	// Field is FieldName or FieldID.
	Field string
	// Stored is the record's value, Configured the process's.
	Stored, Configured string
}

func (e *MismatchError) Error() string {
	switch e.Field {
	case FieldName:
		// The record sits under the configured name's prefix, so its keys
		// were written for, or copied from, the other cluster.
		return fmt.Sprintf("cluster name differs: etcd's cluster record says %q, this process is configured with %q (--cluster-name): "+
			"the keys under this prefix belong to cluster %q (copied or restored under another name); point --etcd-endpoints at cluster %q's own etcd, "+
			"or see docs/operations.md before repairing the record",
			e.Stored, e.Configured, e.Stored, e.Configured)
	case FieldID:
		return fmt.Sprintf("cluster ID differs: etcd's cluster record says %s, this process is configured with %s (--cluster-id): "+
			"if this is that cluster's etcd, set --cluster-id %s (or cluster-id in the config file); "+
			"otherwise point --etcd-endpoints at the etcd of the cluster with ID %s",
			e.Stored, e.Configured, e.Stored, e.Configured)
	}
	return fmt.Sprintf("cluster %s differs: etcd's cluster record says %q, this process is configured with %q", e.Field, e.Stored, e.Configured)
}
