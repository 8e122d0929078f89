package labels

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestParseSet(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"k8s:app=web", "k8s:app=web"},
		{"k8s:tier=front,k8s:app=web", "k8s:app=web,k8s:tier=front"},
		{" k8s:tier=front ,\tk8s:app=web\n", "k8s:app=web,k8s:tier=front"},
		{"reserved:host,k8s:z=1,container:a=2,k8s:a=3", "container:a=2,k8s:a=3,k8s:z=1,reserved:host"},
		{"k8s:app=web,k8s:app=web", "k8s:app=web"},
		{"k8s:app=,k8s:b", "k8s:app,k8s:b"},
		// Byte order: upper case sorts before lower case, '-' before letters.
		{"k8s:b=1,k8s:B=1,k8s:a-b=1,k8s:a.b=1,k8s:ab=1", "k8s:B=1,k8s:a-b=1,k8s:a.b=1,k8s:ab=1,k8s:b=1"},
		// Sources sort before keys: "k8s-x" > "k8s" whatever the keys.
		{"k8s-x:a=1,k8s:z=1", "k8s:z=1,k8s-x:a=1"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseSet(tt.in)
			if err != nil {
				t.Fatalf("ParseSet(%q): %v", tt.in, err)
			}
			if s.String() != tt.want {
				t.Fatalf("ParseSet(%q).String() = %q, want %q", tt.in, s.String(), tt.want)
			}
			again, err := ParseSet(s.String())
			if err != nil || !again.Equal(s) {
				t.Fatalf("ParseSet(String()) = %v, %v; want %v", again, err, s)
			}
		})
	}
}

func TestParseSetInvalid(t *testing.T) {
	tests := []struct {
		in, wantMsg string
	}{
		{"", "is empty; a workload needs at least one label"},
		{"  ", "is empty"},
		{",", "item 1 is empty"},
		{"k8s:app=web,", "item 2 is empty"},
		{"k8s:app=web,,k8s:b=c", "item 2 is empty"},
		{"k8s:app=web, ,k8s:b=c", "item 2 is empty"},
		{"k8s:app=web,tier=front", `label "tier=front": no source`},
		{"k8s:app=web,k8s:app=db", `labels "k8s:app=web" and "k8s:app=db" have the same source and key but different values`},
		{"k8s:app=web,k8s:app", "different values"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseSet(tt.in)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSet(%q) = %v, %v; want ErrInvalid", tt.in, s, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("ParseSet(%q) error %q does not contain %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

func TestNewSet(t *testing.T) {
	web := Label{"k8s", "app", "web"}
	tests := []struct {
		name    string
		in      []Label
		want    string
		wantErr bool
	}{
		{name: "empty", in: nil, want: ""},
		{name: "one", in: []Label{web}, want: "k8s:app=web"},
		{name: "sorted", in: []Label{{"k8s", "tier", "front"}, web, {"container", "x", ""}}, want: "container:x,k8s:app=web,k8s:tier=front"},
		{name: "duplicate collapsed", in: []Label{web, web, web}, want: "k8s:app=web"},
		{name: "same key other source", in: []Label{web, {"container", "app", "db"}}, want: "container:app=db,k8s:app=web"},
		{name: "conflict", in: []Label{web, {"k8s", "app", "db"}}, wantErr: true},
		{name: "invalid label", in: []Label{web, {"", "app", "web"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSet(tt.in...)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("NewSet(%v) = %v, %v; want ErrInvalid", tt.in, s, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSet(%v): %v", tt.in, err)
			}
			if s.String() != tt.want {
				t.Fatalf("NewSet(%v) = %q, want %q", tt.in, s, tt.want)
			}
		})
	}
}

func TestNewSetDoesNotAlias(t *testing.T) {
	in := []Label{{"k8s", "b", "1"}, {"k8s", "a", "1"}}
	s := MustNewSet(in...)
	if in[0].Key != "b" {
		t.Fatalf("NewSet reordered its argument: %v", in)
	}
	in[1].Value = "changed"
	out := s.Labels()
	out[0].Value = "changed"
	if s.String() != "k8s:a=1,k8s:b=1" || s.Labels()[0].Value != "1" {
		t.Fatalf("Set changed through an aliased slice: %v", s.Labels())
	}
}

func TestMustNewSetPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("MustNewSet with an invalid label did not panic")
		}
	}()
	MustNewSet(Label{Key: "app", Value: "web"})
}

func TestFromMap(t *testing.T) {
	s, err := FromMap("k8s", map[string]string{"tier": "front", "app": "web", "node-role.kubernetes.io/control-plane": ""})
	if err != nil {
		t.Fatal(err)
	}
	if want := "k8s:app=web,k8s:node-role.kubernetes.io/control-plane,k8s:tier=front"; s.String() != want {
		t.Fatalf("FromMap = %q, want %q", s, want)
	}
	if s, err := FromMap("k8s", nil); err != nil || !s.IsEmpty() {
		t.Fatalf("FromMap(nil) = %v, %v; want empty set", s, err)
	}
	for _, tt := range []struct {
		name, source string
		m            map[string]string
	}{
		{"no source", "", map[string]string{"app": "web"}},
		{"bad source", "K8S", map[string]string{"app": "web"}},
		{"bad value", "k8s", map[string]string{"app": "a b"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := FromMap(tt.source, tt.m); !errors.Is(err, ErrInvalid) {
				t.Fatalf("FromMap(%q, %v) = %v; want ErrInvalid", tt.source, tt.m, err)
			}
		})
	}
}

func TestSetAccessors(t *testing.T) {
	s := MustNewSet(Label{"k8s", "app", "web"}, Label{"reserved", "host", ""}, Label{"k8s", "tier", "front"})
	if s.Len() != 3 || s.IsEmpty() {
		t.Fatalf("Len = %d, IsEmpty = %v", s.Len(), s.IsEmpty())
	}
	for _, tt := range []struct {
		source, key, value string
		ok                 bool
	}{
		{"k8s", "app", "web", true},
		{"k8s", "tier", "front", true},
		{"reserved", "host", "", true},
		{"k8s", "host", "", false},
		{"container", "app", "", false},
		{"", "", "", false},
	} {
		t.Run(tt.source+":"+tt.key, func(t *testing.T) {
			v, ok := s.Get(tt.source, tt.key)
			if v != tt.value || ok != tt.ok {
				t.Fatalf("Get = %q, %v; want %q, %v", v, ok, tt.value, tt.ok)
			}
			if got := s.Has(Label{tt.source, tt.key, tt.value}); got != tt.ok {
				t.Fatalf("Has = %v, want %v", got, tt.ok)
			}
		})
	}
	if s.Has(Label{"k8s", "app", "db"}) {
		t.Fatal("Has matched a label with another value")
	}
	var zero Set
	if !zero.IsEmpty() || zero.Len() != 0 || zero.Labels() != nil || zero.String() != "" || !zero.Equal(MustNewSet()) {
		t.Fatal("zero Set is not the empty set")
	}
	if _, ok := zero.Get("k8s", "app"); ok {
		t.Fatal("zero Set has a label")
	}
}

func TestHash(t *testing.T) {
	a := MustNewSet(Label{"k8s", "app", "web"}, Label{"k8s", "tier", "front"}, Label{"reserved", "host", ""})
	b := MustNewSet(Label{"reserved", "host", ""}, Label{"k8s", "tier", "front"}, Label{"k8s", "app", "web"})
	c, err := ParseSet("k8s:tier=front, reserved:host, k8s:app=web, k8s:app=web")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []Set{b, c} {
		if !s.Equal(a) || s.Hash() != a.Hash() {
			t.Fatalf("%v (hash %s) differs from %v (hash %s)", s, s.Hash(), a, a.Hash())
		}
	}
	// Fixed values: hashes are persisted, so they must never change.
	for _, tt := range []struct {
		s    Set
		want string
	}{
		{MustNewSet(Label{"k8s", "app", "web"}), "9a9634853a34789cd4901abc299919c6"},
		{Set{}, "e3b0c44298fc1c149afbf4c8996fb924"},
	} {
		if got := tt.s.Hash(); got != tt.want {
			t.Fatalf("Hash of %q = %s, want %s", tt.s, got, tt.want)
		}
	}
	if h := a.Hash(); len(h) != 32 || strings.ToLower(h) != h {
		t.Fatalf("Hash() = %q, want 32 lowercase hex digits", h)
	}
	others := []string{"k8s:app=web", "k8s:app=web,k8s:tier=front", "k8s:app=web,k8s:tier=back,reserved:host", "k8s:app,k8s:tier=front,reserved:host"}
	seen := map[string]string{a.Hash(): a.String(), Set{}.Hash(): ""}
	for _, o := range others {
		h := mustParseSet(t, o).Hash()
		if prev, ok := seen[h]; ok {
			t.Fatalf("%q and %q share hash %s", o, prev, h)
		}
		seen[h] = o
	}
}

func TestHashConcurrent(t *testing.T) {
	s := mustParseSet(t, "k8s:app=web,k8s:tier=front")
	want := hashString(s.String())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			c := s // copies share the cached hash
			if h := c.Hash(); h != want {
				t.Errorf("Hash() = %s, want %s", h, want)
			}
		})
	}
	wg.Wait()
}

func TestJSON(t *testing.T) {
	type doc struct {
		Labels Set            `json:"labels"`
		ByHash map[string]Set `json:"byHash,omitempty"`
	}
	for _, in := range []string{"k8s:app=web,k8s:tier=front,reserved:host", ""} {
		t.Run(in, func(t *testing.T) {
			var s Set
			if in != "" {
				s = mustParseSet(t, in)
			}
			d := doc{Labels: s, ByHash: map[string]Set{s.Hash(): s}}
			b, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf(`{"labels":%q,`, in); !strings.HasPrefix(string(b), want) {
				t.Fatalf("json = %s, want prefix %s", b, want)
			}
			var got doc
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if !got.Labels.Equal(s) || !got.ByHash[s.Hash()].Equal(s) {
				t.Fatalf("round trip: got %+v, want %+v", got, d)
			}
		})
	}
	var s Set
	if err := json.Unmarshal([]byte(`"app=web"`), &s); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Unmarshal of a label without a source = %v, want ErrInvalid", err)
	}
}

func mustParseSet(tb testing.TB, s string) Set {
	tb.Helper()
	set, err := ParseSet(s)
	if err != nil {
		tb.Fatal(err)
	}
	return set
}

func FuzzParseSet(f *testing.F) {
	for _, s := range []string{
		"k8s:app=web,k8s:tier=front",
		" k8s:tier=front , reserved:host ",
		"k8s:app.kubernetes.io/name=web,k8s:io.kubernetes.pod.namespace=default",
		"k8s:app=,k8s:app",
		"k8s:app=web,k8s:app=db",
		"a:b:c=d,=,",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSet(in)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSet(%q) error %v does not wrap ErrInvalid", in, err)
			}
			return
		}
		if s.IsEmpty() {
			t.Fatalf("ParseSet(%q) succeeded with an empty set", in)
		}
		str := s.String()
		again, err := ParseSet(str)
		if err != nil {
			t.Fatalf("ParseSet(%q) = %q, which does not parse: %v", in, str, err)
		}
		if !again.Equal(s) || again.String() != str || again.Hash() != s.Hash() {
			t.Fatalf("ParseSet(%q) = %q, reparsed as %q", in, str, again)
		}
		rebuilt, err := NewSet(s.Labels()...)
		if err != nil || rebuilt.String() != str {
			t.Fatalf("NewSet(Labels()) = %q, %v; want %q", rebuilt, err, str)
		}
	})
}

func benchSet() string {
	return "k8s:io.kubernetes.pod.namespace=default,k8s:app.kubernetes.io/name=web,k8s:app.kubernetes.io/part-of=shop," +
		"k8s:tier=front,k8s:pod-template-hash=5d8f7c9b6,k8s:io.cilium.k8s.policy.serviceaccount=web,k8s:version=v1.2.3"
}

func BenchmarkParseSet(b *testing.B) {
	in := benchSet()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSet(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSetString(b *testing.B) {
	s := mustParseSet(b, benchSet())
	b.ReportAllocs()
	for b.Loop() {
		_ = s.String()
	}
}

// BenchmarkSetHash measures a fresh hash per iteration, the cost paid once
// per Set; later calls on the same Set return the cached value.
func BenchmarkSetHash(b *testing.B) {
	ls := mustParseSet(b, benchSet()).Labels()
	b.ReportAllocs()
	for b.Loop() {
		_ = newSorted(ls).Hash()
	}
}

func TestHasSource(t *testing.T) {
	s := MustNewSet(Label{Source: "k8s", Key: "app", Value: "web"}, Label{Source: "reserved", Key: "host"})
	for src, want := range map[string]bool{"k8s": true, "reserved": true, "container": false, "": false, "zzz": false} {
		if got := s.HasSource(src); got != want {
			t.Errorf("HasSource(%q) = %v, want %v", src, got, want)
		}
	}
	if (Set{}).HasSource("k8s") {
		t.Error("empty set has a source")
	}
}

// TestSetLimits holds the bounds on one label set: a 10,000-label request
// once stored a 730 KB identity in etcd.
func TestSetLimits(t *testing.T) {
	many := func(n int) []Label {
		ls := make([]Label, n)
		for i := range ls {
			ls[i] = Label{Source: "k8s", Key: fmt.Sprintf("key-%05d", i), Value: "v"}
		}
		return ls
	}
	// Labels of the longest kind: a 253-character prefix, a 63-character
	// name and a 63-character value.
	long := func(n int) []Label {
		prefix := strings.Repeat(strings.Repeat("a", 62)+".", 4)[:252] + "b"
		ls := make([]Label, n)
		for i := range ls {
			ls[i] = Label{Source: "k8s", Key: fmt.Sprintf("%s/%s%05d", prefix, strings.Repeat("n", 58), i), Value: strings.Repeat("v", 63)}
		}
		return ls
	}
	join := func(ls []Label) string {
		parts := make([]string, len(ls))
		for i, l := range ls {
			parts[i] = l.String()
		}
		return strings.Join(parts, ",")
	}
	if _, err := NewSet(many(MaxSetLabels)...); err != nil {
		t.Fatalf("NewSet(%d labels) = %v, want it allowed", MaxSetLabels, err)
	}
	if _, err := ParseSet(join(many(MaxSetLabels))); err != nil {
		t.Fatalf("ParseSet(%d labels) = %v, want it allowed", MaxSetLabels, err)
	}
	tests := []struct {
		name    string
		ls      []Label
		wantMsg string
	}{
		{"10,000 labels", many(10000), "10000 labels; at most 128"},
		{"one label too many", many(MaxSetLabels + 1), "129 labels; at most 128"},
		{"too many bytes", long(MaxSetLabels), "bytes; at most 16384"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, f := range []struct {
				name string
				make func() (Set, error)
			}{
				{"NewSet", func() (Set, error) { return NewSet(tt.ls...) }},
				{"ParseSet", func() (Set, error) { return ParseSet(join(tt.ls)) }},
				{"FromMap", func() (Set, error) {
					m := make(map[string]string)
					for _, l := range tt.ls {
						m[l.Key] = l.Value
					}
					return FromMap("k8s", m)
				}},
			} {
				_, err := f.make()
				if !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("%s = %v, want an error wrapping ErrTooLarge and ErrInvalid", f.name, err)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("%s = %q, want it to say %q", f.name, err, tt.wantMsg)
				}
			}
		})
	}
}
