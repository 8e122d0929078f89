package labels

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Limits on one label set, and so on one security identity: every agent
// keeps every identity of the cluster (up to 65,280, more in a mesh) in
// memory, and etcd stores each under two keys. Kubernetes itself bounds
// labels only by the object size (etcd's 1.5 MiB request limit); real
// workloads carry a few dozen labels with their namespace's, so these
// bounds are far above any pod and far below what would hurt a node.
const (
	// MaxSetLabels is the most labels one set may hold (pod labels,
	// namespace labels and the ones meshplane adds, together).
	MaxSetLabels = 128
	// MaxSetBytes is the longest canonical form (String) of one set.
	MaxSetBytes = 16 << 10
)

// ErrTooLarge is wrapped (with ErrInvalid) by the error for a label set
// over MaxSetLabels or MaxSetBytes.
var ErrTooLarge = errors.New("label set too large")

// tooLargeError names the limit a set broke; it unwraps to ErrInvalid and
// ErrTooLarge.
type tooLargeError struct{ msg string }

func (e *tooLargeError) Error() string   { return e.msg }
func (e *tooLargeError) Unwrap() []error { return []error{ErrInvalid, ErrTooLarge} }

const trimLabels = "drop the labels that do not describe the workload (an identity names a workload, not one pod)"

// checkLimits reports whether the canonical set s is within the limits.
func checkLimits(s Set) error {
	switch {
	case s.Len() > MaxSetLabels:
		return tooManyLabels(s.Len())
	case len(s.String()) > MaxSetBytes:
		return tooManyBytes(len(s.String()))
	}
	return nil
}

func tooManyLabels(n int) error {
	return &tooLargeError{fmt.Sprintf("label set has %d labels; at most %d make one identity: %s", n, MaxSetLabels, trimLabels)}
}

func tooManyBytes(n int) error {
	return &tooLargeError{fmt.Sprintf("label set is %d bytes; at most %d make one identity: %s", n, MaxSetBytes, trimLabels)}
}

// Set is an immutable, canonical set of labels: sorted by (Source, Key) in
// byte order, with at most one label per (Source, Key). The zero Set is the
// empty set.
//
// A Set is a single pointer to shared, never-modified data, so it is cheap
// to copy and safe for concurrent use. It is not comparable with ==
// (compare with Equal or by String).
type Set struct{ d *setData }

type setData struct {
	labels []Label // sorted, validated, unique (Source, Key)
	str    string  // canonical form, computed at construction

	hashOnce sync.Once
	hash     string // guarded by hashOnce
}

func compareLabels(a, b Label) int {
	return cmp.Or(strings.Compare(a.Source, b.Source), strings.Compare(a.Key, b.Key))
}

// NewSet validates ls and returns them as a canonical Set. Labels repeated
// with the same value are collapsed; two labels with the same source and key
// but different values are an error, and so is a set over MaxSetLabels or
// MaxSetBytes (ErrTooLarge). NewSet() returns the empty Set.
func NewSet(ls ...Label) (Set, error) {
	if len(ls) > 4*MaxSetLabels {
		// Far over the limit: say so before validating them all.
		return Set{}, tooManyLabels(len(ls))
	}
	for _, l := range ls {
		if err := l.Validate(); err != nil {
			return Set{}, err
		}
	}
	return canonical(slices.Clone(ls))
}

// canonical sorts and deduplicates valid labels in place and wraps them.
func canonical(ls []Label) (Set, error) {
	slices.SortStableFunc(ls, compareLabels)
	out := ls[:0]
	for _, l := range ls {
		if n := len(out); n > 0 && compareLabels(out[n-1], l) == 0 {
			if out[n-1].Value != l.Value {
				return Set{}, invalidf("labels %q and %q have the same source and key but different values; keep only one", out[n-1], l)
			}
			continue
		}
		out = append(out, l)
	}
	set := newSorted(out)
	if err := checkLimits(set); err != nil {
		return Set{}, err
	}
	return set, nil
}

// newSorted wraps labels that are already valid, sorted and unique.
func newSorted(ls []Label) Set {
	if len(ls) == 0 {
		return Set{}
	}
	n := len(ls) - 1
	for _, l := range ls {
		n += len(l.Source) + len(l.Key) + len(l.Value) + 2
	}
	var b strings.Builder
	b.Grow(n)
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(l.Source)
		b.WriteByte(':')
		b.WriteString(l.Key)
		if l.Value != "" {
			b.WriteByte('=')
			b.WriteString(l.Value)
		}
	}
	return Set{d: &setData{labels: ls, str: b.String()}}
}

// MustNewSet is NewSet for tests and constants; it panics on invalid input.
func MustNewSet(ls ...Label) Set {
	s, err := NewSet(ls...)
	if err != nil {
		panic(err)
	}
	return s
}

// ParseSet parses a comma-separated list of labels such as
// "k8s:app=web,k8s:tier=front". Space around items is trimmed; items may be
// in any order. An empty string or an empty item is an error: a workload
// needs at least one label. A set over MaxSetLabels or MaxSetBytes is an
// error too (ErrTooLarge).
func ParseSet(s string) (Set, error) {
	if strings.TrimSpace(s) == "" {
		return Set{}, invalidf("label set %q is empty; a workload needs at least one label, e.g. k8s:app=web", s)
	}
	if n := strings.Count(s, ",") + 1; n > 4*MaxSetLabels {
		// Far over the limit: say so before parsing it.
		return Set{}, tooManyLabels(n)
	}
	if len(s) > 4*MaxSetBytes {
		return Set{}, tooManyBytes(len(s))
	}
	ls := make([]Label, 0, strings.Count(s, ",")+1)
	i := 0
	for item := range strings.SplitSeq(s, ",") {
		i++
		item = strings.TrimSpace(item)
		if item == "" {
			return Set{}, invalidf("label set %q: item %d is empty; remove the extra ','", s, i)
		}
		l, err := Parse(item)
		if err != nil {
			return Set{}, err
		}
		ls = append(ls, l)
	}
	// Fast path for text that is already canonical (what meshplane itself
	// writes to etcd, read back by every agent): sorted, unique and without
	// spaces or "=" before an empty value, so it is its own canonical form.
	if isCanonical(s, ls) {
		set := Set{d: &setData{labels: ls, str: s}}
		if err := checkLimits(set); err != nil {
			return Set{}, err
		}
		return set, nil
	}
	return canonical(ls)
}

// isCanonical reports whether s, which parsed into ls, is exactly the
// canonical form of ls.
func isCanonical(s string, ls []Label) bool {
	n := len(ls) - 1
	for i, l := range ls {
		if i > 0 && compareLabels(ls[i-1], l) >= 0 {
			return false
		}
		n += len(l.Source) + len(l.Key) + 1
		if l.Value != "" {
			n += len(l.Value) + 1
		}
	}
	// Same labels, same total length: no space was trimmed and no "key="
	// was written for an empty value, so the text is byte-for-byte the
	// canonical join.
	return n == len(s)
}

// FromMap builds a Set from keys and values that all come from one source,
// such as a Kubernetes pod's labels with source "k8s". An empty map gives
// the empty Set.
func FromMap(source string, m map[string]string) (Set, error) {
	ls := make([]Label, 0, len(m))
	for k, v := range m {
		ls = append(ls, Label{Source: source, Key: k, Value: v})
	}
	return NewSet(ls...)
}

// String returns the canonical form: the labels' String forms in order,
// joined by ','. The empty Set gives "". ParseSet(s.String()) equals s for
// every non-empty s.
func (s Set) String() string {
	if s.d == nil {
		return ""
	}
	return s.d.str
}

func (s Set) labels() []Label {
	if s.d == nil {
		return nil
	}
	return s.d.labels
}

// Labels returns a copy of the labels in canonical order.
func (s Set) Labels() []Label { return slices.Clone(s.labels()) }

// Len returns the number of labels.
func (s Set) Len() int { return len(s.labels()) }

// IsEmpty reports whether s has no labels.
func (s Set) IsEmpty() bool { return s.Len() == 0 }

// Equal reports whether s and o hold the same labels.
func (s Set) Equal(o Set) bool { return s.String() == o.String() }

// Get returns the value of the label with the given source and key.
func (s Set) Get(source, key string) (value string, ok bool) {
	ls := s.labels()
	i, ok := slices.BinarySearchFunc(ls, Label{Source: source, Key: key}, compareLabels)
	if !ok {
		return "", false
	}
	return ls[i].Value, true
}

// HasSource reports whether any label of s comes from source. Labels are
// sorted by source first, so this is a binary search, with no allocation.
func (s Set) HasSource(source string) bool {
	ls := s.labels()
	i, _ := slices.BinarySearchFunc(ls, source, func(l Label, src string) int { return strings.Compare(l.Source, src) })
	return i < len(ls) && ls[i].Source == source
}

// Has reports whether s contains l, value included.
func (s Set) Has(l Label) bool {
	v, ok := s.Get(l.Source, l.Key)
	return ok && v == l.Value
}

// Hash returns a stable identifier of the canonical form that is safe to
// use in keys: the lowercase hex of the first 16 bytes of the SHA-256 of
// String(). It is computed once per Set.
func (s Set) Hash() string {
	if s.d == nil {
		return hashString("")
	}
	s.d.hashOnce.Do(func() { s.d.hash = hashString(s.d.str) })
	return s.d.hash
}

func hashString(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// MarshalText returns the canonical form.
func (s Set) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses the canonical form (or anything ParseSet accepts).
// Unlike ParseSet it accepts empty text as the empty Set, so that every
// Set, the empty one included, survives a round trip through JSON.
func (s *Set) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*s = Set{}
		return nil
	}
	p, err := ParseSet(string(text))
	if err != nil {
		return err
	}
	*s = p
	return nil
}
