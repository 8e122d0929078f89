package labels

import (
	"slices"
	"strings"
)

// Filter drops labels that do not describe a workload (per-pod hashes,
// indexes and job run IDs) so that they do not split one workload into many
// identities. A Filter is immutable and safe for concurrent use; a nil
// *Filter drops nothing.
type Filter struct {
	patterns []pattern
}

type pattern struct {
	source string // "" matches any source
	key    string // the whole key, or its prefix when prefix is set
	prefix bool
}

func (p pattern) match(l Label) bool {
	if p.source != "" && p.source != l.Source {
		return false
	}
	if p.prefix {
		return strings.HasPrefix(l.Key, p.key)
	}
	return l.Key == p.key
}

// NewFilter compiles exclusion patterns. Each pattern is an exact key
// ("pod-template-hash") or a key prefix ending in '*'
// ("batch.kubernetes.io/*"), optionally preceded by a source and ':'
// ("k8s:pod-template-hash", "container:*"). An invalid pattern is an error
// wrapping ErrInvalid.
func NewFilter(patterns []string) (*Filter, error) {
	f := &Filter{patterns: make([]pattern, 0, len(patterns))}
	for _, s := range patterns {
		p, err := parsePattern(s)
		if err != nil {
			return nil, err
		}
		f.patterns = append(f.patterns, p)
	}
	return f, nil
}

func parsePattern(s string) (pattern, error) {
	var p pattern
	key := s
	if src, rest, ok := strings.Cut(s, ":"); ok {
		if src == "" {
			return p, invalidf("filter pattern %q: empty source; drop the ':' to match any source", s)
		}
		if why := checkSource(src); why != "" {
			return p, invalidf("filter pattern %q: %s", s, why)
		}
		p.source, key = src, rest
	}
	p.key, p.prefix = strings.CutSuffix(key, "*")
	switch {
	case p.prefix && p.key == "" && p.source == "":
		return p, invalidf("filter pattern %q matches every label; name a source (e.g. container:*) or a key prefix (e.g. batch.kubernetes.io/*)", s)
	case p.prefix:
		// A prefix is a partial key, so only its characters can be checked.
		for _, r := range p.key {
			if !isAlnum(r) && !strings.ContainsRune("-_./", r) {
				return p, invalidf("filter pattern %q: key prefix contains %q; use letters, digits, '-', '_', '.', '/' and a final '*'", s, r)
			}
		}
		if strings.Count(p.key, "/") > 1 {
			return p, invalidf("filter pattern %q: key prefix has more than one '/'", s)
		}
	case p.key == "":
		return p, invalidf("filter pattern %q: no key; write a key (pod-template-hash) or a key prefix ending in '*' (batch.kubernetes.io/*)", s)
	default:
		if why := checkKey(p.key); why != "" {
			return p, invalidf("filter pattern %q: %s; only a single trailing '*' is special", s, why)
		}
	}
	return p, nil
}

// DefaultFilterPatterns returns the patterns for labels that Kubernetes
// controllers stamp on pods and that differ between pods, rollouts or job
// runs of one workload. Kept, they would give each pod or rollout its own
// identity. The slice is a fresh copy.
func DefaultFilterPatterns() []string {
	return []string{
		"pod-template-hash",                  // Deployment: per ReplicaSet (rollout)
		"pod-template-generation",            // DaemonSet (legacy): per generation
		"controller-revision-hash",           // StatefulSet, DaemonSet: per revision
		"statefulset.kubernetes.io/pod-name", // StatefulSet: per pod
		"apps.kubernetes.io/pod-index",       // StatefulSet: per pod
		"batch.kubernetes.io/*",              // Job: controller-uid, job-name, job-completion-index
		"controller-uid",                     // Job (legacy): per run
		"job-name",                           // Job (legacy): per CronJob run
	}
}

// Excluded reports whether f drops l.
func (f *Filter) Excluded(l Label) bool {
	if f == nil {
		return false
	}
	for _, p := range f.patterns {
		if p.match(l) {
			return true
		}
	}
	return false
}

// Apply returns s without the labels f excludes. It returns s itself when
// nothing is excluded.
func (f *Filter) Apply(s Set) Set {
	ls := s.labels()
	i := 0
	for i < len(ls) && !f.Excluded(ls[i]) {
		i++
	}
	if i == len(ls) {
		return s
	}
	kept := slices.Clone(ls[:i])
	for _, l := range ls[i+1:] {
		if !f.Excluded(l) {
			kept = append(kept, l)
		}
	}
	return newSorted(kept)
}
