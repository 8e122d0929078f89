package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Parse reads policies written as YAML: one or more documents separated by
// "---" lines, each a NetworkPolicy (networking.k8s.io/v1), a
// MeshNetworkPolicy (meshplane.io/v1alpha1), or a List of them (what
// kubectl get -o yaml prints). Empty documents are skipped. It is
// all-or-nothing: any problem in any document is an error (wrapping
// ErrInvalid, with *FieldError for each problem) and no policy is
// returned. Two documents may not define the same namespace/name.
//
// The policies are validated and defaulted (see Policy).
func Parse(data []byte) ([]*Policy, error) {
	if len(data) > MaxInputBytes {
		return nil, inputLimit(len(data))
	}
	var (
		out   []*Policy
		all   []*FieldError
		seen  = make(map[string]string) // key → where it was defined
		docNo int
	)
	for _, d := range splitDocuments(data) {
		j, err := yaml.YAMLToJSONStrict(d.body)
		if err != nil {
			docNo++
			all = append(all, &FieldError{Document: docNo, Detail: yamlError(err, d.line)})
			continue
		}
		var v any
		if err := decodeJSON(j, &v); err != nil {
			// YAMLToJSON wrote it; this is a bug, not bad input.
			return nil, fmt.Errorf("%w: document %d: %w", ErrInvalid, docNo+1, err)
		}
		if v == nil {
			continue // only comments or whitespace
		}
		docNo++
		for _, item := range manifestItems(v, docNo, &all) {
			var ps problems
			p, name := walkManifest(&ps, item.v)
			if len(ps.list) == 0 {
				p = canonical(p)
				p.validate(&ps)
			}
			if len(ps.list) == 0 {
				b, err := json.Marshal(p)
				if err != nil {
					return nil, fmt.Errorf("%w: document %d: %w", ErrInvalid, docNo, err)
				}
				sizeLimit(&ps, len(b))
			}
			if len(ps.list) > 0 {
				ps.locate(name, docNo, item.path)
				all = append(all, ps.list...)
				continue
			}
			where := "document " + strconv.Itoa(docNo)
			if item.path != "" {
				where += ", " + item.path
			}
			if prev, dup := seen[p.Key()]; dup {
				all = append(all, &FieldError{Policy: p.Key(), Document: docNo, Item: item.path,
					Detail: fmt.Sprintf("defined again; %s already defines it (names are shared by NetworkPolicy and MeshNetworkPolicy); keep one", prev)})
				continue
			}
			seen[p.Key()] = where
			out = append(out, p)
		}
	}
	if len(all) > 0 {
		return nil, joinProblems(all)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no policy documents in the input; write a NetworkPolicy or MeshNetworkPolicy in YAML", ErrInvalid)
	}
	return out, nil
}

// document is one YAML document of a stream.
type document struct {
	body []byte
	line int // 1-based line of the input where the body starts
}

// splitDocuments splits a YAML stream at "---" lines, as kubectl does: a
// line that starts with "---" followed only by white space.
func splitDocuments(data []byte) []document {
	var (
		docs  []document
		start = 0 // byte offset of the current document
		line  = 1 // line of start
		n     = 1 // current line number
	)
	for off := 0; off < len(data); {
		end := bytes.IndexByte(data[off:], '\n')
		next := len(data)
		if end >= 0 {
			next = off + end + 1
		}
		l := data[off:next]
		if bytes.HasPrefix(l, []byte("---")) && len(bytes.TrimSpace(l[3:])) == 0 {
			docs = append(docs, document{body: data[start:off], line: line})
			start, line = next, n+1
		}
		off = next
		n++
	}
	return append(docs, document{body: data[start:], line: line})
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// yamlError rewrites a YAML error's document-relative line numbers to
// lines of the whole input.
func yamlError(err error, firstLine int) string {
	msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
	msg = yamlLineRE.ReplaceAllStringFunc(msg, func(s string) string {
		n, err := strconv.Atoi(s[len("line "):])
		if err != nil {
			return s
		}
		return "line " + strconv.Itoa(n+firstLine-1)
	})
	return msg + "; fix the YAML syntax"
}

// decodeJSON decodes one JSON value, keeping numbers as json.Number so
// that 80.5 and 1e100 are reported, not rounded.
func decodeJSON(data []byte, v *any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("data after the JSON value")
	}
	return nil
}

// manifestItem is one policy manifest of a document, with its path inside a
// List ("" for a document that is the manifest).
type manifestItem struct {
	v    any
	path string
}

// manifestItems returns the manifests of a document: the document itself,
// or the items of a List.
func manifestItems(v any, docNo int, all *[]*FieldError) []manifestItem {
	m, ok := v.(map[string]any)
	if !ok {
		*all = append(*all, &FieldError{Document: docNo,
			Detail: fmt.Sprintf("is %s; a policy document is a mapping with apiVersion, kind, metadata and spec", describe(v))})
		return nil
	}
	kind, _ := m["kind"].(string)
	if kind != "List" && kind != KindNetworkPolicy+"List" && kind != KindMeshNetworkPolicy+"List" {
		return []manifestItem{{v: v}}
	}
	var ps problems
	w := walker{&ps}
	w.object("", v, "apiVersion", "kind", "metadata", "items")
	items := w.list("items", m["items"])
	ps.locate("", docNo, "")
	*all = append(*all, ps.list...)
	out := make([]manifestItem, len(items))
	for i, it := range items {
		out[i] = manifestItem{v: it, path: index("items", i)}
	}
	return out
}

// metadataFields are the fields of Kubernetes' ObjectMeta. Only name and
// namespace mean anything here; the others are accepted so that manifests
// exported from a cluster apply as they are.
var metadataFields = []string{
	"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
	"creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "finalizers",
	"ownerReferences", "managedFields", "generateName", "selfLink",
}

// walkManifest converts one manifest to a Policy, reporting structural
// problems (unknown fields, wrong types). It returns the name to report
// problems under.
func walkManifest(ps *problems, v any) (*Policy, string) {
	w := walker{ps}
	m, _ := w.object("", v, "apiVersion", "kind", "metadata", "spec")
	p := &Policy{}
	if m == nil {
		return p, ""
	}
	apiVersion, _ := w.str("apiVersion", m["apiVersion"])
	p.Kind, _ = w.str("kind", m["kind"])
	meta, _ := w.object("metadata", m["metadata"], metadataFields...)
	p.Name, _ = w.str("metadata.name", meta["name"])
	p.Namespace, _ = w.str("metadata.namespace", meta["namespace"])
	name := p.Name
	if meta == nil {
		ps.add("metadata", "missing; give the policy metadata.name (and metadata.namespace, default %q)", DefaultNamespace)
	}
	switch {
	case p.Kind == "":
		ps.add("kind", "missing; use %s (apiVersion %s) or %s (apiVersion %s)",
			KindNetworkPolicy, APIVersionNetworkPolicy, KindMeshNetworkPolicy, APIVersionMeshNetworkPolicy)
		return p, name
	case p.Kind != KindNetworkPolicy && p.Kind != KindMeshNetworkPolicy:
		ps.add("kind", "%s (apiVersion %s) is not a policy; this file may hold only %s (apiVersion %s) and %s (apiVersion %s)",
			p.Kind, apiVersion, KindNetworkPolicy, APIVersionNetworkPolicy, KindMeshNetworkPolicy, APIVersionMeshNetworkPolicy)
		return p, name
	}
	if want := apiVersionOf(p.Kind); apiVersion != want {
		ps.add("apiVersion", "%s has apiVersion %s, not %q", p.Kind, want, apiVersion)
	}
	p.Spec = w.spec("spec", m["spec"])
	return p, name
}

func apiVersionOf(kind string) string {
	if kind == KindMeshNetworkPolicy {
		return APIVersionMeshNetworkPolicy
	}
	return APIVersionNetworkPolicy
}

// Decode reads a policy in the JSON form Encode writes (the value stored
// in etcd), validates and defaults it. Unknown fields are errors.
func Decode(data []byte) (*Policy, error) {
	if len(data) > MaxPolicyBytes {
		return nil, fmt.Errorf("%w: stored policy is %d bytes; at most %d make one policy: delete the key, or apply it again split into several policies", ErrInvalid, len(data), MaxPolicyBytes)
	}
	var v any
	if err := decodeJSON(data, &v); err != nil {
		return nil, fmt.Errorf("%w: not JSON: %w", ErrInvalid, err)
	}
	var ps problems
	w := walker{&ps}
	p := &Policy{}
	if m, _ := w.object("", v, "kind", "namespace", "name", "spec"); m != nil {
		p.Kind, _ = w.str("kind", m["kind"])
		p.Namespace, _ = w.str("namespace", m["namespace"])
		p.Name, _ = w.str("name", m["name"])
		p.Spec = w.spec("spec", m["spec"])
	} else if v == nil {
		ps.add("", "is null; a stored policy is a JSON object")
	}
	if len(ps.list) == 0 {
		p = canonical(p)
		p.validate(&ps)
	}
	if len(ps.list) > 0 {
		ps.locate(displayKey(p), 0, "")
		return nil, joinProblems(ps.list)
	}
	return p, nil
}

// Encode returns the policy's canonical JSON: defaulted, empty lists and
// maps left out, map keys sorted. Decode(Encode(p)) equals p for every p
// that Parse or Decode returned; for other policies it equals p with the
// defaults filled in. An invalid policy is an error.
func (p *Policy) Encode() ([]byte, error) {
	c := canonical(p)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var ps problems
	sizeLimit(&ps, len(b))
	ps.locate(displayKey(c), 0, "")
	if err := joinProblems(ps.list); err != nil {
		return nil, err
	}
	return b, nil
}

// Manifest returns the policy as a YAML document a user would write (with
// apiVersion, kind and metadata); Parse reads it back to an equal policy.
func (p *Policy) Manifest() ([]byte, error) {
	c := canonical(p)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	doc := struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec Spec `json:"spec"`
	}{APIVersion: apiVersionOf(c.Kind), Kind: c.Kind, Spec: c.Spec}
	doc.Metadata.Name, doc.Metadata.Namespace = c.Name, c.Namespace
	j, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// walker converts decoded JSON values (map[string]any, []any, string,
// json.Number, bool, nil) to the typed spec, reporting each structural
// problem with its field path. JSON null is treated as an absent field, as
// Kubernetes does.
type walker struct{ ps *problems }

// describe names the JSON type of v for error messages.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + v.String()
	case bool:
		return "the boolean " + strconv.FormatBool(v)
	}
	return fmt.Sprintf("%T", v)
}

// mapping returns v as a mapping. It returns nil, false for null and for a
// value that is not a mapping (the latter reported).
func (w walker) mapping(path string, v any) (map[string]any, bool) {
	if v == nil {
		return nil, false
	}
	m, ok := v.(map[string]any)
	if !ok {
		what := path
		if what == "" {
			what = "the document"
		}
		w.ps.add(path, "is %s; %s must be a mapping", describe(v), what)
		return nil, false
	}
	return m, true
}

// object is mapping that also reports every field not in allowed.
func (w walker) object(path string, v any, allowed ...string) (map[string]any, bool) {
	m, ok := w.mapping(path, v)
	if !ok {
		return nil, false
	}
	var unknown []string
	for k := range m {
		if !slices.Contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		w.ps.add(field(path, k), "unknown field; the fields here are %s", strings.Join(allowed, ", "))
	}
	return m, true
}

// list returns v as a list; nil for null, an empty list and a value that is
// not a list (the latter reported).
func (w walker) list(path string, v any) []any {
	if v == nil {
		return nil
	}
	l, ok := v.([]any)
	if !ok {
		w.ps.add(path, "is %s; it must be a list (write items as \"- item\" lines)", describe(v))
		return nil
	}
	if len(l) == 0 {
		return nil
	}
	return l
}

// str returns v as a string; "", false for null and non-strings (the latter
// reported).
func (w walker) str(path string, v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case string:
		return v, true
	case json.Number, bool:
		w.ps.add(path, "is %s; it must be a string: quote it (\"%v\")", describe(v), v)
	default:
		w.ps.add(path, "is %s; it must be a string", describe(v))
	}
	return "", false
}

// strings returns v as a list of strings.
func (w walker) strings(path string, v any) []string {
	l := w.list(path, v)
	if l == nil {
		return nil
	}
	out := make([]string, 0, len(l))
	for i, it := range l {
		s, ok := w.str(index(path, i), it)
		if !ok && it == nil {
			w.ps.add(index(path, i), "is empty; remove the item or give it a value")
		}
		out = append(out, s)
	}
	return out
}

// int32 returns a JSON number as an int32; a number that is not a whole
// number or does not fit is reported with rule, which says what is valid.
func (w walker) int32(path string, v any, rule string) (int32, bool) {
	n, ok := v.(json.Number)
	if !ok {
		w.ps.add(path, "is %s; %s", describe(v), rule)
		return 0, false
	}
	i, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(n.String(), 64)
		if ferr != nil || f != math.Trunc(f) || f < math.MinInt32 || f > math.MaxInt32 {
			w.ps.add(path, "%s is not a whole number in range; %s", n, rule)
			return 0, false
		}
		i = int64(f)
	}
	if i < math.MinInt32 || i > math.MaxInt32 {
		w.ps.add(path, "%s is out of range; %s", n, rule)
		return 0, false
	}
	return int32(i), true
}

func (w walker) spec(path string, v any) Spec {
	var s Spec
	m, _ := w.object(path, v, "podSelector", "policyTypes", "ingress", "egress")
	if m == nil {
		if v == nil {
			w.ps.add(path, "missing; a policy needs a spec with at least podSelector ({} selects every pod of the namespace)")
		}
		return s
	}
	if ps, ok := m["podSelector"]; !ok {
		w.ps.add(field(path, "podSelector"), "missing; write podSelector: {} to select every pod of the namespace, or give matchLabels")
	} else if sel := w.selector(field(path, "podSelector"), ps); sel != nil {
		s.PodSelector = *sel
	}
	for _, t := range w.strings(field(path, "policyTypes"), m["policyTypes"]) {
		s.PolicyTypes = append(s.PolicyTypes, Type(t))
	}
	for i, r := range w.list(field(path, "ingress"), m["ingress"]) {
		rp := index(field(path, "ingress"), i)
		rm, _ := w.object(rp, r, "ports", "from")
		s.Ingress = append(s.Ingress, IngressRule{
			Ports: w.ports(field(rp, "ports"), rm["ports"]),
			From:  w.peers(field(rp, "from"), rm["from"]),
		})
	}
	for i, r := range w.list(field(path, "egress"), m["egress"]) {
		rp := index(field(path, "egress"), i)
		rm, _ := w.object(rp, r, "ports", "to")
		s.Egress = append(s.Egress, EgressRule{
			Ports: w.ports(field(rp, "ports"), rm["ports"]),
			To:    w.peers(field(rp, "to"), rm["to"]),
		})
	}
	return s
}

const portRule = "write a port number 1-65535 or a port name"

func (w walker) ports(path string, v any) []Port {
	var out []Port
	for i, it := range w.list(path, v) {
		pp := index(path, i)
		m, _ := w.object(pp, it, "protocol", "port", "endPort")
		var p Port
		if s, ok := w.str(field(pp, "protocol"), m["protocol"]); ok {
			p.Protocol = Protocol(s)
		}
		switch pv := m["port"].(type) {
		case nil:
		case string:
			p.Port = &PortValue{Name: pv}
			if pv == "" {
				w.ps.add(field(pp, "port"), "is empty; %s, or leave port out for every port", portRule)
			}
		default:
			if n, ok := w.int32(field(pp, "port"), pv, portRule); ok {
				p.Port = &PortValue{Number: n}
			}
		}
		if ev, ok := m["endPort"]; ok && ev != nil {
			if n, ok := w.int32(field(pp, "endPort"), ev, "write the last port of the range, 1-65535"); ok {
				p.EndPort = &n
			}
		}
		out = append(out, p)
	}
	return out
}

func (w walker) peers(path string, v any) []Peer {
	var out []Peer
	for i, it := range w.list(path, v) {
		pp := index(path, i)
		m, _ := w.object(pp, it, "podSelector", "namespaceSelector", "ipBlock", "clusters")
		var p Peer
		if sv, ok := m["podSelector"]; ok {
			p.PodSelector = w.selector(field(pp, "podSelector"), sv)
		}
		if sv, ok := m["namespaceSelector"]; ok {
			p.NamespaceSelector = w.selector(field(pp, "namespaceSelector"), sv)
		}
		if bv, ok := m["ipBlock"]; ok && bv != nil {
			bp := field(pp, "ipBlock")
			bm, _ := w.object(bp, bv, "cidr", "except")
			p.IPBlock = &IPBlock{}
			p.IPBlock.CIDR, _ = w.str(field(bp, "cidr"), bm["cidr"])
			p.IPBlock.Except = w.strings(field(bp, "except"), bm["except"])
		}
		p.Clusters = w.strings(field(pp, "clusters"), m["clusters"])
		out = append(out, p)
	}
	return out
}

// selector converts a label selector. Null is the empty selector (it
// matches everything), as `podSelector:` with no value means in
// Kubernetes; nil comes back only for a value of the wrong type.
func (w walker) selector(path string, v any) *LabelSelector {
	if v == nil {
		return &LabelSelector{}
	}
	m, ok := w.object(path, v, "matchLabels", "matchExpressions")
	if !ok {
		return nil
	}
	sel := &LabelSelector{}
	if ml, ok := w.mapping(field(path, "matchLabels"), m["matchLabels"]); ok {
		for k, lv := range ml {
			s, ok := w.str(field(path, "matchLabels")+"."+k, lv)
			if !ok && lv == nil {
				s = "" // "app:" with no value is the empty value
			}
			if sel.MatchLabels == nil {
				sel.MatchLabels = make(map[string]string, len(ml))
			}
			sel.MatchLabels[k] = s
		}
	}
	for i, it := range w.list(field(path, "matchExpressions"), m["matchExpressions"]) {
		ep := index(field(path, "matchExpressions"), i)
		em, _ := w.object(ep, it, "key", "operator", "values")
		var r LabelSelectorRequirement
		r.Key, _ = w.str(field(ep, "key"), em["key"])
		op, _ := w.str(field(ep, "operator"), em["operator"])
		r.Operator = Operator(op)
		r.Values = w.strings(field(ep, "values"), em["values"])
		sel.MatchExpressions = append(sel.MatchExpressions, r)
	}
	return sel
}
