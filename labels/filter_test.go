package labels

import (
	"errors"
	"testing"
)

func TestNewFilterInvalid(t *testing.T) {
	for _, p := range []string{
		"",
		"*",
		":pod-template-hash",
		"K8S:app",
		"k8s:",
		"app=web",
		"a*b",
		"**",
		"batch.kubernetes.io/x/*",
		"batch,kubernetes.io/*",
		"-app",
		"k8s:app:x",
	} {
		t.Run(p, func(t *testing.T) {
			f, err := NewFilter([]string{"pod-template-hash", p})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("NewFilter(%q) = %v, %v; want ErrInvalid", p, f, err)
			}
		})
	}
}

func TestFilter(t *testing.T) {
	f, err := NewFilter([]string{"pod-template-hash", "batch.kubernetes.io/*", "k8s:tier", "container:*"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		l        Label
		excluded bool
	}{
		{Label{"k8s", "pod-template-hash", "5d8f7c9b6"}, true},
		{Label{"other", "pod-template-hash", "x"}, true},
		{Label{"k8s", "pod-template-hash-x", "x"}, false},
		{Label{"k8s", "batch.kubernetes.io/job-name", "j"}, true},
		{Label{"k8s", "batch.kubernetes.io/controller-uid", "u"}, true},
		{Label{"k8s", "xbatch.kubernetes.io/job-name", "j"}, false},
		{Label{"k8s", "tier", "front"}, true},
		{Label{"other", "tier", "front"}, false},
		{Label{"container", "anything", ""}, true},
		{Label{"k8s", "app", "web"}, false},
		{Label{"reserved", "host", ""}, false},
	}
	for _, tt := range tests {
		t.Run(tt.l.String(), func(t *testing.T) {
			if got := f.Excluded(tt.l); got != tt.excluded {
				t.Fatalf("Excluded(%v) = %v, want %v", tt.l, got, tt.excluded)
			}
		})
	}
}

func TestFilterApply(t *testing.T) {
	def, err := NewFilter(DefaultFilterPatterns())
	if err != nil {
		t.Fatalf("default patterns: %v", err)
	}
	tests := []struct {
		name string
		f    *Filter
		in   string
		want string
	}{
		{"nil filter", nil, "k8s:app=web,k8s:pod-template-hash=abc", "k8s:app=web,k8s:pod-template-hash=abc"},
		{"empty filter", &Filter{}, "k8s:app=web,k8s:pod-template-hash=abc", "k8s:app=web,k8s:pod-template-hash=abc"},
		{"deployment", def, "k8s:app=web,k8s:pod-template-hash=5d8f7c9b6,k8s:io.kubernetes.pod.namespace=default",
			"k8s:app=web,k8s:io.kubernetes.pod.namespace=default"},
		{"statefulset", def, "k8s:app=db,k8s:apps.kubernetes.io/pod-index=2,k8s:controller-revision-hash=db-7f9,k8s:statefulset.kubernetes.io/pod-name=db-2",
			"k8s:app=db"},
		{"job", def, "k8s:batch.kubernetes.io/controller-uid=1f2e,k8s:batch.kubernetes.io/job-name=pi-29,k8s:controller-uid=1f2e,k8s:job-name=pi-29,k8s:app=pi",
			"k8s:app=pi"},
		{"daemonset", def, "k8s:pod-template-generation=3,k8s:controller-revision-hash=6b5,k8s:app=agent", "k8s:app=agent"},
		{"everything filtered", def, "k8s:pod-template-hash=abc", ""},
		{"nothing filtered", def, "k8s:app.kubernetes.io/name=web,reserved:host", "k8s:app.kubernetes.io/name=web,reserved:host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := mustParseSet(t, tt.in)
			got := tt.f.Apply(in)
			if got.String() != tt.want {
				t.Fatalf("Apply(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if in.String() != mustParseSet(t, tt.in).String() {
				t.Fatalf("Apply modified its input: %q", in)
			}
			if tt.want != "" {
				if want := mustParseSet(t, tt.want); got.Hash() != want.Hash() {
					t.Fatalf("Apply(%q) hash %s, want %s", tt.in, got.Hash(), want.Hash())
				}
			}
		})
	}
}
