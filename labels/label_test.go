package labels

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Label
		str  string // canonical String, when it differs from in
	}{
		{in: "k8s:app=web", want: Label{"k8s", "app", "web"}},
		{in: "k8s:io.kubernetes.pod.namespace=default", want: Label{"k8s", "io.kubernetes.pod.namespace", "default"}},
		{in: "k8s:app.kubernetes.io/name=web", want: Label{"k8s", "app.kubernetes.io/name", "web"}},
		{in: "reserved:host", want: Label{"reserved", "host", ""}},
		{in: "k8s:app=", want: Label{"k8s", "app", ""}, str: "k8s:app"},
		{in: "container-rt:A_b.C-9=X.y_z-0", want: Label{"container-rt", "A_b.C-9", "X.y_z-0"}},
		{in: "a:x=1", want: Label{"a", "x", "1"}},
		{in: "k8s:" + strings.Repeat("k", 63) + "=" + strings.Repeat("v", 63), want: Label{"k8s", strings.Repeat("k", 63), strings.Repeat("v", 63)}},
		{in: "k8s:" + strings.Repeat("a.", 126) + "a/n=v", want: Label{"k8s", strings.Repeat("a.", 126) + "a/n", "v"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			str := tt.str
			if str == "" {
				str = tt.in
			}
			if got.String() != str {
				t.Fatalf("String() = %q, want %q", got.String(), str)
			}
			if again, err := Parse(got.String()); err != nil || again != got {
				t.Fatalf("Parse(String()) = %#v, %v; want %#v", again, err, got)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		in      string
		wantMsg string // substring of the error
	}{
		{"app=web", `label "app=web": no source; write it as <source>:<key>=<value>, e.g. k8s:app=web`},
		{"app", "no source"},
		{"", "no source"},
		{":app=web", "no source"},
		{"app=web:x", "no source"},
		{"k8s:", "no key"},
		{"k8s:=web", "no key"},
		{"K8s:app=web", `source "K8s"`},
		{"1k8s:app=web", `source "1k8s"`},
		{"k_8s:app=web", `source "k_8s"`},
		{strings.Repeat("s", 33) + ":app=web", "source"},
		{"k8s:app=web=x", `value "web=x" contains '='`},
		{"k8s:a:b=c", `key "a:b" contains ':'`},
		{"k8s:app=a,b", `contains ','`},
		{"k8s:app=-web", "must start and end"},
		{"k8s:app=web.", "must start and end"},
		{"k8s:-app=web", "must start and end"},
		{"k8s:app=w b", "contains ' '"},
		{"k8s:app=wéb", "contains 'é'"},
		{"k8s:" + strings.Repeat("k", 64) + "=v", "64 characters"},
		{"k8s:app=" + strings.Repeat("v", 64), "64 characters"},
		{"k8s:a/b/c=v", "more than one '/'"},
		{"k8s:/name=v", "key prefix"},
		{"k8s:App.io/name=v", "key prefix"},
		{"k8s:a..b/name=v", "key prefix"},
		{"k8s:-a.b/name=v", "key prefix"},
		{"k8s:a-.b/name=v", "key prefix"},
		{"k8s:a_b/name=v", "key prefix"},
		{"k8s:" + strings.Repeat("a.", 126) + "ab/n=v", "key prefix"},
		{"k8s:app.io/=v", "key name is empty"},
		{"k8s:app.io/-n=v", "key name"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			l, err := Parse(tt.in)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %#v, %v; want ErrInvalid", tt.in, l, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Parse(%q) error %q does not contain %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		l    Label
		ok   bool
	}{
		{"valid", Label{"k8s", "app", "web"}, true},
		{"empty value", Label{"reserved", "world", ""}, true},
		{"no source", Label{"", "app", "web"}, false},
		{"no key", Label{"k8s", "", "web"}, false},
		{"colon in source", Label{"k8s:x", "app", "web"}, false},
		{"equals in key", Label{"k8s", "a=b", "web"}, false},
		{"comma in value", Label{"k8s", "app", "a,b"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.l.Validate()
			if tt.ok && err != nil {
				t.Fatalf("Validate(%#v): %v", tt.l, err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate(%#v) = %v, want ErrInvalid", tt.l, err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"k8s:app=web", "reserved:host", "k8s:app.kubernetes.io/name=web", "k8s:app=", "a:b:c=d=e", "app=web", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %#v, which does not validate: %v", s, l, err)
		}
		again, err := Parse(l.String())
		if err != nil || again != l {
			t.Fatalf("Parse(%q) = %#v; Parse(%q) = %#v, %v", s, l, l.String(), again, err)
		}
		if s != l.String() && s != l.String()+"=" {
			t.Fatalf("Parse(%q) = %#v, whose canonical form %q differs beyond a trailing '='", s, l, l.String())
		}
	})
}
