package policy

import (
	"slices"
	"strings"

	"github.com/meshplane/meshplane/labels"
)

// Label sources and keys of identity label sets. PodLabels builds them;
// selectors match them.
const (
	// SourceK8s labels are the pod's own labels, plus LabelNamespace.
	SourceK8s = "k8s"
	// SourceNamespace labels are the labels of the pod's namespace.
	SourceNamespace = "ns"
	// SourceMesh labels describe where the pod runs in the mesh.
	SourceMesh = "mesh"

	// LabelNamespace (source k8s) holds the pod's namespace.
	LabelNamespace = "io.kubernetes.pod.namespace"
	// LabelNamespaceName (source ns) holds the namespace's name, as
	// Kubernetes sets it on every namespace.
	LabelNamespaceName = "kubernetes.io/metadata.name"
	// LabelCluster (source mesh) holds the name of the pod's cluster.
	LabelCluster = "cluster"
)

// PodLabels returns the identity labels of a pod, sorted as a labels.Set
// sorts them: k8s:<k>=<v> for each pod label, k8s:io.kubernetes.pod.namespace=<namespace>,
// ns:<k>=<v> for each namespace label plus ns:kubernetes.io/metadata.name=<namespace>,
// and mesh:cluster=<cluster>. The namespace labels PodLabels adds win over
// pod or namespace labels with the same key. The labels are not validated;
// labels.NewSet does that.
//
// The agent builds identities with this function and the Engine's
// selectors match what it builds, so the two cannot drift.
func PodLabels(cluster, namespace string, podLabels, namespaceLabels map[string]string) []labels.Label {
	out := make([]labels.Label, 0, len(podLabels)+len(namespaceLabels)+3)
	for k, v := range podLabels {
		if k != LabelNamespace {
			out = append(out, labels.Label{Source: SourceK8s, Key: k, Value: v})
		}
	}
	for k, v := range namespaceLabels {
		if k != LabelNamespaceName {
			out = append(out, labels.Label{Source: SourceNamespace, Key: k, Value: v})
		}
	}
	out = append(out,
		labels.Label{Source: SourceK8s, Key: LabelNamespace, Value: namespace},
		labels.Label{Source: SourceNamespace, Key: LabelNamespaceName, Value: namespace},
		labels.Label{Source: SourceMesh, Key: LabelCluster, Value: cluster},
	)
	slices.SortFunc(out, func(a, b labels.Label) int {
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out
}

// String formats the selector as kubectl does: "app=web,tier in (a,b),!x";
// the empty selector (which matches everything) is "".
func (s LabelSelector) String() string {
	type part struct{ key, text string }
	var parts []part
	for k, v := range s.MatchLabels {
		parts = append(parts, part{k, k + "=" + v})
	}
	for _, r := range s.MatchExpressions {
		var t string
		switch r.Operator {
		case OpIn:
			t = r.Key + " in (" + strings.Join(r.Values, ",") + ")"
		case OpNotIn:
			t = r.Key + " notin (" + strings.Join(r.Values, ",") + ")"
		case OpExists:
			t = r.Key
		case OpDoesNotExist:
			t = "!" + r.Key
		default:
			t = r.Key + " " + string(r.Operator) + " (" + strings.Join(r.Values, ",") + ")"
		}
		parts = append(parts, part{r.Key, t})
	}
	slices.SortStableFunc(parts, func(a, b part) int { return strings.Compare(a.key, b.key) })
	texts := make([]string, len(parts))
	for i, p := range parts {
		texts[i] = p.text
	}
	return strings.Join(texts, ",")
}

// requirement is one compiled condition on a label set.
type requirement struct {
	source, key string
	op          Operator
	values      []string // sorted, unique; In and NotIn only
}

func (r requirement) matches(s labels.Set) bool {
	v, ok := s.Get(r.source, r.key)
	switch r.op {
	case OpIn:
		return ok && contains(r.values, v)
	case OpNotIn:
		return !ok || !contains(r.values, v)
	case OpExists:
		return ok
	case OpDoesNotExist:
		return !ok
	}
	return false
}

func contains(sorted []string, v string) bool {
	_, ok := slices.BinarySearch(sorted, v)
	return ok
}

// String is the requirement's canonical text, part of a selector's cache
// key. Keys and values never contain ' ', ',' or '|'.
func (r requirement) String() string {
	return r.source + ":" + r.key + " " + string(r.op) + " " + strings.Join(r.values, ",")
}

// requirements is a conjunction of requirements, sorted and unique by
// text.
type requirements []requirement

func (rs requirements) matches(s labels.Set) bool {
	for _, r := range rs {
		if !r.matches(s) {
			return false
		}
	}
	return true
}

func (rs requirements) String() string {
	texts := make([]string, len(rs))
	for i, r := range rs {
		texts[i] = r.String()
	}
	return strings.Join(texts, "|")
}

// compileSelector appends the requirements of a validated label selector
// on labels of source.
func compileSelector(rs []requirement, source string, sel *LabelSelector) []requirement {
	for k, v := range sel.MatchLabels {
		rs = append(rs, requirement{source: source, key: k, op: OpIn, values: []string{v}})
	}
	for _, e := range sel.MatchExpressions {
		r := requirement{source: source, key: e.Key, op: e.Operator}
		if e.Operator == OpIn || e.Operator == OpNotIn {
			r.values = slices.Compact(slices.Sorted(slices.Values(e.Values)))
		}
		rs = append(rs, r)
	}
	return rs
}

// normalize sorts rs and drops duplicates, so that equal selectors get
// equal cache keys.
func normalize(rs []requirement) requirements {
	slices.SortFunc(rs, func(a, b requirement) int { return strings.Compare(a.String(), b.String()) })
	return slices.CompactFunc(rs, func(a, b requirement) bool { return a.String() == b.String() })
}
