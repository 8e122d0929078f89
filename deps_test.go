package meshplane_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries holds the lines STYLE.md draws in the import graph:
// one importer per heavy dependency, and pure packages that stay pure.
func TestImportBoundaries(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/meshplane/meshplane/"
	rules := []struct {
		dep     string // import path prefix
		allowed func(pkg string) bool
		why     string
	}{
		{"go.etcd.io/etcd", func(p string) bool { return strings.HasPrefix(p, mod+"kvstore") },
			"only kvstore/ imports etcd"},
		{mod + "kvstore", func(p string) bool {
			return !strings.HasPrefix(p, mod+"labels") && !strings.HasPrefix(p, mod+"identity")
		}, "labels and identity are pure"},
		{"github.com/cilium/ebpf", func(p string) bool { return strings.HasPrefix(p, mod+"bpf") },
			"only bpf/ imports cilium/ebpf"},
		{"github.com/hashicorp/memberlist", func(p string) bool { return strings.HasPrefix(p, mod+"health") },
			"only health/ imports memberlist"},
		// Kubernetes' API types (the CRD types, and what they build on)
		// stay under controlplane/.
		{"k8s.io/apimachinery", func(p string) bool { return strings.HasPrefix(p, mod+"controlplane/") },
			"only controlplane/ imports k8s.io/apimachinery"},
		{"k8s.io/api", func(p string) bool { return strings.HasPrefix(p, mod+"controlplane/") },
			"only controlplane/ imports k8s.io/api"},
		// The standard logger only where a dependency demands one: health
		// adapts memberlist's *log.Logger to slog.
		{"log", func(p string) bool { return strings.HasPrefix(p, mod+"cmd/") || strings.HasPrefix(p, mod+"health") },
			"log through an injected *slog.Logger"},
		// Daemons log (through an injected slog.Logger); library packages
		// return errors and never log.
		{"log/slog", func(p string) bool {
			for _, d := range []string{"cmd/", "nodeagent", "health"} {
				if strings.HasPrefix(p, mod+d) {
					return true
				}
			}
			return false
		}, "library packages never log"},
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, imports := fields[0], fields[1:]
		for _, imp := range imports {
			for _, r := range rules {
				match := imp == r.dep || (r.dep != "log" && strings.HasPrefix(imp, r.dep+"/"))
				if match && !r.allowed(pkg) {
					t.Errorf("%s imports %s: %s", pkg, imp, r.why)
				}
			}
		}
	}
}
