package realnode_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kubeapiserver"
	"github.com/meshplane/meshplane/kubenode"
	"github.com/meshplane/meshplane/kubenode/image"
)

// agnhostImage is the e2e suite's test image at tools/kubernetes's
// version (`e2e.test --list-images`); the test builds it from agnhost's
// source (no registry is reachable) under the name the suite pulls.
const agnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"

// netpolCI is the part of the upstream NetworkPolicy suite that CI runs
// (a few minutes): ingress and egress, namespaces, named ports, CIDRs
// with an except, UDP, and a policy deleted. MESHPLANE_NETPOL_FOCUS=all
// (make netpol-e2e) runs every test of the suite; any other value is a
// ginkgo focus of its own.
var netpolCI = []string{
	"should support a 'default-deny-ingress' policy",
	"should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
	"should allow ingress access on one named port",
	"should deny egress from pods based on PodSelector",
	"should enforce except clause while egress access to server in CIDR block",
	"should stop enforcing policies after they are deleted",
	"using UDP should enforce policy based on Ports",
}

// TestUpstreamNetworkPolicy runs the upstream Kubernetes NetworkPolicy
// e2e tests (k8s.io/kubernetes test/e2e/network/netpol, built as e2e.test
// by `make kube-node`) against meshplane on a real node: the suite makes
// its namespaces, pods (agnhost porter), Services and NetworkPolicies
// through the apiserver and probes every pod pair with `agnhost connect`
// through kubectl exec, to Service ClusterIPs, so the control plane, the
// agent's identities and policy, and the datapath's service translation
// are all on the path. SCTP tests are skipped (SCTP connectivity is a
// feature the suite gates, [Feature:SCTPConnectivity]).
func TestUpstreamNetworkPolicy(t *testing.T) {
	e2eBin, agnhost := requireComponent(t, "e2e.test"), requireComponent(t, "agnhost")
	kubectl := requireComponent(t, "kubectl")
	m := StartMeshplane(t, kubenode.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Minute)
	defer cancel()

	tar := filepath.Join(m.Dir, "agnhost.tar")
	if err := image.WriteFile(tar, image.Spec{Name: agnhostImage, Files: map[string]string{"/agnhost": agnhost}, Entrypoint: []string{"/agnhost"}}); err != nil {
		t.Fatal(err)
	}
	if err := m.Node.ImportImage(ctx, tar); err != nil {
		t.Fatal(err)
	}

	focus := `\[sig-network\] Netpol .*(` + quoteAll(netpolCI) + `)`
	switch f := os.Getenv("MESHPLANE_NETPOL_FOCUS"); f {
	case "":
	case "all":
		focus = `\[sig-network\] Netpol`
	default:
		focus = f
	}
	report := filepath.Join(m.Dir, "e2e")
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	junit := filepath.Join(report, "junit.xml")
	logPath := filepath.Join(report, "e2e.log")
	args := []string{
		"--kubeconfig=" + m.Node.Kubeconfig,
		"--kubectl-path=" + kubectl,
		"--provider=skeleton",
		"--ginkgo.focus=" + focus,
		"--ginkgo.skip=SCTP",
		"--ginkgo.junit-report=" + junit,
		"--ginkgo.timeout=75m",
		"--ginkgo.no-color",
		"--report-dir=" + report,
		"--disable-log-dump",
	}
	t.Logf("e2e.test %s (log %s)", strings.Join(args, " "), logPath)
	start := time.Now()
	runErr := m.Node.NS.Do(func() error {
		f, err := os.Create(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd := exec.CommandContext(ctx, e2eBin, args...)
		cmd.Dir = report
		cmd.Stdout, cmd.Stderr = f, f
		cmd.Env = append(os.Environ(), "KUBECONFIG="+m.Node.Kubeconfig, "HOME="+report)
		return cmd.Run()
	})
	took := time.Since(start)
	res, err := readJUnit(junit)
	if err != nil {
		t.Fatalf("e2e.test (%v, after %s): no report: %v\n%s", runErr, took.Round(time.Second), err, tail(logPath, 80))
	}
	t.Logf("upstream NetworkPolicy e2e: %d passed, %d failed in %s (%d specs of the suite not selected)", res.passed, len(res.failed), took.Round(time.Second), res.skipped)
	if dir := os.Getenv("MESHPLANE_KUBENODE_LOGS"); dir != "" {
		// The reports outlive the node's directory.
		for _, f := range []string{junit, logPath} {
			if b, err := os.ReadFile(f); err == nil {
				_ = os.WriteFile(filepath.Join(dir, "netpol-"+filepath.Base(f)), b, 0o644)
			}
		}
	}
	for _, f := range res.failed {
		t.Errorf("failed: %s", f)
	}
	if runErr != nil && len(res.failed) == 0 {
		t.Errorf("e2e.test: %v\n%s", runErr, tail(logPath, 80))
	}
	if res.passed == 0 {
		t.Errorf("no test ran with focus %q\n%s", focus, tail(logPath, 40))
	}
	if t.Failed() {
		t.Logf("e2e.test log (end):\n%s", tail(logPath, 150))
	}
}

// requireComponent returns the cached path of a Kubernetes build of
// tools/kubernetes (make kube-node), or skips (fails with
// MESHPLANE_REQUIRE_KUBENODE).
func requireComponent(t *testing.T, name string) string {
	t.Helper()
	p, err := kubeapiserver.ComponentPath(name)
	if err == nil {
		_, err = os.Stat(p)
	}
	if err != nil {
		msg := fmt.Sprintf("%s: %v (run make kube-node)", name, err)
		if os.Getenv(kubenode.RequireEnv) != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = regexp.QuoteMeta(s)
	}
	return strings.Join(q, "|")
}

type junitResult struct {
	passed, skipped int
	failed          []string
}

// readJUnit reads ginkgo's JUnit report.
func readJUnit(path string) (junitResult, error) {
	var res junitResult
	b, err := os.ReadFile(path)
	if err != nil {
		return res, err
	}
	var doc struct {
		Suites []struct {
			Cases []struct {
				Name    string    `xml:"name,attr"`
				Status  string    `xml:"status,attr"`
				Skipped *struct{} `xml:"skipped"`
				Failure *struct {
					Message string `xml:"message,attr"`
				} `xml:"failure"`
				Error *struct {
					Message string `xml:"message,attr"`
				} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		return res, fmt.Errorf("parse %s: %w", path, err)
	}
	if len(doc.Suites) == 0 {
		return res, errors.New("no test suite in the report")
	}
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			if !strings.HasPrefix(c.Name, "[It]") {
				// The suite's own nodes (BeforeSuite, ReportAfterSuite):
				// a failure there is one too.
				if c.Failure != nil || c.Error != nil {
					res.failed = append(res.failed, c.Name)
				}
				continue
			}
			switch {
			case c.Failure != nil:
				res.failed = append(res.failed, c.Name+": "+firstLine(c.Failure.Message))
			case c.Error != nil:
				res.failed = append(res.failed, c.Name+": "+firstLine(c.Error.Message))
			case c.Skipped != nil:
				res.skipped++
			default:
				res.passed++
			}
		}
	}
	return res, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
