package kubenode_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshplane/meshplane/kubenode"
)

// helperEnv makes TestStaleHelper run: it starts a node with a pod,
// prints the node's directory, and is killed without its cleanup.
const helperEnv = "KUBENODE_TEST_STALE_HELPER"

func TestStaleHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("run by TestStaleSweep")
	}
	n := kubenode.Start(t, kubenode.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := clientset(t, n)
	if _, err := cs.CoreV1().Pods("default").Create(ctx, probePod("left", "serve"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitRunning(ctx, t, cs, "left")
	// The parent kills this process now: no cleanup runs.
	os.Stdout.WriteString("NODE " + n.Dir + " " + n.NS.Name() + " " + p.Status.PodIP + "\n")
	select {}
}

// TestStaleSweep kills a process whose node runs a pod, so that none of
// its cleanup runs (a test binary killed at its timeout), and checks that
// the next Start removes what it left: the node's directory and mounts,
// the containers' shims, the cgroups and the node's namespace.
func TestStaleSweep(t *testing.T) {
	kubenode.Require(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestStaleHelper$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	var dir, ns string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "NODE" {
			dir, ns = f[1], f[2]
			break
		}
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if dir == "" {
		t.Fatal("the helper printed no node")
	}
	cgroup := "kubenode-" + strconv.Itoa(pid) + "-1"
	// What a killed node leaves: its directory (with the kubelet's
	// mount), its cgroups, its namespace.
	for _, p := range []string{dir, filepath.Join("/sys/fs/cgroup/memory", cgroup), filepath.Join("/run/netns", ns)} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the killed node left no %s (%v): the test proves nothing", p, err)
		}
	}

	kubenode.Start(t, kubenode.Config{NoCNI: true})
	for _, p := range []string{dir, filepath.Join("/sys/fs/cgroup/memory", cgroup), filepath.Join("/run/netns", ns)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("after the next Start, %s is still there (%v)", p, err)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), dir) {
		t.Errorf("mounts under %s are left", dir)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), dir) {
			t.Errorf("a process of the killed node runs: %s: %q", p, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}
