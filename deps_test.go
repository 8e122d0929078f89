package meshplane_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/meshplane/meshplane/"

// The house's grammar (docs/architecture.md): pure models at the top level,
// etcd algorithms and stores under kvstore/, daemons that wire them, and
// cmd/ that reads flags and starts the daemons.
var (
	// models are the pure packages: values, their encodings and checks.
	// They import the standard library and each other, nothing else of
	// ours.
	models = []string{"labels", "identity", "ipcache", "service", "policy", "ipam", "node", "pod", "cluster"}
	// daemons are the long-running components that cmd/ starts.
	daemons = []string{"nodeagent", "controlplane", "clustermesh"}
	// testHelpers are the packages for _test files (they import testing):
	// only other test helpers import them outside _test files (kubetest
	// runs its apiserver on etcdtest's etcd; kubenode its node in a
	// netnstest namespace).
	testHelpers = []string{"kvstore/etcdtest", "kubetest", "bpf/bpftest", "netnstest", "kubenode"}
	// stdlibOnly are leaf packages that link the standard library only,
	// and never testing: binaries and test helpers alike use them (pki:
	// the test helpers' certificates and meshctl's mesh CA; atomicfile:
	// the files pki and the agent write).
	stdlibOnly = []string{"pki", "internal/atomicfile"}
)

// under returns a predicate true for the packages at or below any of dirs
// (paths relative to the module).
func under(dirs ...string) func(pkg string) bool {
	return func(pkg string) bool {
		for _, d := range dirs {
			if pkg == mod+d || strings.HasPrefix(pkg, mod+d+"/") {
				return true
			}
		}
		return false
	}
}

func not(f func(string) bool) func(string) bool { return func(p string) bool { return !f(p) } }

// matches reports whether imp is pattern, or below it when pattern ends
// in "/...".
func matches(pattern, imp string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return imp == base || strings.HasPrefix(imp, base+"/")
	}
	return imp == pattern
}

// importRule says who may import dep directly.
type importRule struct {
	dep     string                // an import path, or a tree ending in "/..."
	allowed func(pkg string) bool // the importers allowed
	why     string
}

// importRules are the lines STYLE.md draws in the import graph: one
// importer per heavy dependency, pure packages that stay pure, and imports
// that run one way (cmd -> daemons -> kvstore, bpf, models -> stdlib).
var importRules = []importRule{
	// Heavy dependencies, one importer each.
	{"go.etcd.io/etcd/...", under("kvstore"),
		"only kvstore/ imports etcd"},
	{"go.etcd.io/etcd/server/...", under("kvstore/embedded", "kvstore/etcdtest"),
		"only kvstore/embedded (and etcdtest) run an etcd server; everything else is a client"},
	{mod + "kvstore/embedded", under("cmd/meshctl", "lab", "kvstore/etcdtest", "bench"),
		"an in-process etcd is for one machine (meshctl --etcd-embedded and demo, the lab, tests): a daemon without endpoints must fail, not start a private cluster"},
	{"github.com/cilium/ebpf/...", under("bpf"),
		"only bpf/ imports cilium/ebpf"},
	{"github.com/hashicorp/memberlist/...", under("health"),
		"only health/ imports memberlist"},
	{"k8s.io/client-go/...", under("controlplane/k8s"),
		"only controlplane/k8s talks to the API server: agents read etcd only, and one informer per kind serves the cluster"},
	{"k8s.io/api/...", under("controlplane"),
		"Kubernetes types stay in the control plane, which translates them into our models"},
	{"k8s.io/apimachinery/...", under("controlplane"),
		"Kubernetes types stay in the control plane, which translates them into our models"},

	// Logging: daemons log through an injected slog.Logger; libraries
	// return errors. The standard logger only where a dependency demands
	// one: health adapts memberlist's *log.Logger to slog.
	{"log", under("cmd", "health"),
		"log through an injected *slog.Logger"},
	{"log/slog", under(append([]string{"cmd", "health"}, daemons...)...),
		"library packages never log"},

	// Daemons: cmd/ wires them; they never import each other, except that
	// the agent runs clustermesh's remote watches; nothing below them
	// (kvstore, bpf, models, api, health, lab, ...) imports them. The lab
	// runs mesh-agent as a process, so it tests the binary that ships.
	{mod + "nodeagent/...", under("cmd", "nodeagent", "bench"),
		"nodeagent is a daemon: only cmd/ starts it (and the bench/ harnesses, in-process)"},
	// The lab is the one exception: it has no daemon between its commands,
	// so it runs the control plane's reconciler in-process
	// (controlplane.SyncOnce over its topology), and the demo writes what
	// production writes through the same code.
	{mod + "controlplane/...", under("cmd", "controlplane", "lab", "bench"),
		"controlplane is a daemon: only cmd/ starts it (and the lab syncs through it, and bench/ measures it in-process)"},
	{mod + "clustermesh/...", under("cmd", "clustermesh", "nodeagent"),
		"clustermesh is a daemon's part: cmd/ and the agent (which runs the remote watches) use it"},
	{mod + "cmd/...", under("cmd"),
		"cmd/ is the top: flags and mains, imported by nothing else"},

	// Models are pure: they import only each other and the standard
	// library (and policy, sigs.k8s.io/yaml to read manifests).
	{mod + "kvstore/...", not(under(models...)), "models are pure: no etcd"},
	{mod + "bpf/...", not(under(models...)), "models are pure: no kernel"},
	{mod + "health/...", not(under(models...)), "models are pure: no gossip"},
	{mod + "api/...", not(under(models...)), "models are pure: the API converts to them, not the other way"},
	{mod + "lab/...", under("lab", "cmd", "e2e"), "the lab is a harness: only meshctl and the e2e tests drive it"},

	// Test helpers are for _test files (go list's Imports leave those
	// out); binaries that need a real process use its non-test package
	// (kubeapiserver, kvstore/embedded).
	{mod + "kvstore/etcdtest", under(testHelpers...), "etcdtest is a test helper: import it from _test files (outside tests, kvstore/embedded runs an etcd)"},
	{mod + "kubetest", under(testHelpers...), "kubetest is a test helper: import it from _test files (outside tests, kubeapiserver.Start runs a kube-apiserver)"},
	{mod + "bpf/bpftest", under(testHelpers...), "bpftest is a test helper: import it from _test files"},
	{mod + "netnstest", under(testHelpers...), "netnstest is a test helper: import it from _test files"},
	{mod + "kubenode", under(testHelpers...), "kubenode is a test helper: import it from _test files (its image writer, kubenode/image, is not: anyone may use that)"},
	{mod + "kubeapiserver", under("kubetest", "kubenode", "bench", "lab", "cmd/meshctl", "e2e"),
		"a kube-apiserver process is for one machine (the lab, benches, meshctl, kubetest, kubenode, the e2e tests): daemons talk to a cluster's apiserver through controlplane/k8s"},
}

// TestImportBoundaries checks every package's direct imports against
// importRules.
func TestImportBoundaries(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, imports := fields[0], fields[1:]
		for _, imp := range imports {
			for _, r := range importRules {
				if matches(r.dep, imp) && !r.allowed(pkg) {
					t.Errorf("%s imports %s: %s", pkg, imp, r.why)
				}
			}
		}
	}
}

// TestStdlibOnly checks what the stdlibOnly packages link, directly or
// not: only standard packages (as go list tells them) besides
// themselves, and not testing.
func TestStdlibOnly(t *testing.T) {
	args := []string{"list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}"}
	for _, p := range stdlibOnly {
		args = append(args, "./"+p+"/...")
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go %v: %v", args, err)
	}
	own := under(stdlibOnly...)
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		dep, standard, _ := strings.Cut(line, " ")
		switch {
		case dep == "testing":
			t.Errorf("%v link testing: they are for binaries too; keep test code in _test files", stdlibOnly)
		case standard != "true" && !own(dep):
			// Which import brings it in: go list -deps -f '{{.ImportPath}}: {{.Imports}}'.
			t.Errorf("%v link %s: they import the standard library only", stdlibOnly, dep)
		}
	}
}

// TestDaemonDeps checks what the daemons link, directly or not: never the
// etcd server (go list -deps ./cmd/mesh-agent | grep etcd/server prints
// nothing), never a test helper, and no Kubernetes client in the agent.
func TestDaemonDeps(t *testing.T) {
	banned := []struct {
		roots []string // packages whose dependencies are checked, if present
		dep   string
		why   string
	}{
		{[]string{"cmd/mesh-agent", "cmd/mesh-controlplane", "nodeagent", "controlplane", "clustermesh"}, "go.etcd.io/etcd/server/...",
			"a daemon is an etcd client; with no endpoints it fails (kvstore.ErrConfig) instead of starting a private etcd"},
		{[]string{"cmd/mesh-agent", "cmd/mesh-controlplane", "nodeagent", "controlplane", "clustermesh"}, mod + "kvstore/etcdtest",
			"test helpers stay out of binaries"},
		{[]string{"cmd/mesh-agent", "nodeagent"}, "k8s.io/client-go/...",
			"agents do not talk to Kubernetes: they read etcd, which the control plane writes"},
		// The CNI plugin is a short-lived process the runtime execs for
		// every pod: it talks to the agent's socket and links nothing of
		// the agent, etcd or Kubernetes (docs/cni.md gives its size).
		{[]string{"cmd/mesh-cni", "cni"}, mod + "nodeagent/...", "mesh-cni is a small binary: it asks the agent over its socket (api/agentjson), it does not link it"},
		{[]string{"cmd/mesh-cni", "cni"}, "google.golang.org/grpc/...", "mesh-cni starts for every pod: it speaks the agent API's JSON form (api/agentjson), not gRPC, whose start-up costs more than the plugin's work"},
		{[]string{"cmd/mesh-cni", "cni"}, "google.golang.org/protobuf/...", "mesh-cni starts for every pod: no protobuf runtime (api/agentjson is plain JSON)"},
		{[]string{"cmd/mesh-cni", "cni"}, mod + "kvstore/...", "mesh-cni is a small binary: the agent, not the plugin, talks to etcd"},
		{[]string{"cmd/mesh-cni", "cni"}, mod + "controlplane/...", "mesh-cni is a small binary: the pod's labels reach the agent through etcd"},
		{[]string{"cmd/mesh-cni", "cni"}, "go.etcd.io/...", "mesh-cni is a small binary: no etcd client or server"},
		{[]string{"cmd/mesh-cni", "cni"}, "k8s.io/...", "mesh-cni is a small binary: no Kubernetes client; the runtime passes the pod's name in CNI_ARGS"},
		// No binary links the testing package or a test helper (meshctl
		// bench controlplane runs its apiserver with kubeapiserver, not
		// kubetest).
		{[]string{"cmd"}, "testing", "binaries do not link testing: a test helper (kubetest, etcdtest, goleak) got into a non-test import"},
		{[]string{"cmd"}, "go.uber.org/goleak/...", "goleak is for TestMain"},
		{[]string{"cmd"}, mod + "kvstore/etcdtest", "test helpers stay out of binaries"},
		{[]string{"cmd"}, mod + "kubetest", "test helpers stay out of binaries: use kubeapiserver"},
		{[]string{"cmd"}, mod + "kubenode", "test helpers stay out of binaries"},
	}
	for _, b := range banned {
		var roots []string
		for _, r := range b.roots {
			if _, err := os.Stat(r); err == nil {
				roots = append(roots, "./"+r+"/...")
			}
		}
		if len(roots) == 0 {
			continue
		}
		out, err := exec.Command("go", append([]string{"list", "-deps"}, roots...)...).Output()
		if err != nil {
			t.Fatalf("go list -deps %v: %v", roots, err)
		}
		var linked []string
		for dep := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
			if matches(b.dep, dep) {
				linked = append(linked, dep)
			}
		}
		if len(linked) > 0 {
			// Which import brings it in: go list -deps -f '{{.ImportPath}}: {{.Imports}}'.
			t.Errorf("%v link %d packages of %s (%s, ...): %s", roots, len(linked), b.dep, linked[0], b.why)
		}
	}
}
