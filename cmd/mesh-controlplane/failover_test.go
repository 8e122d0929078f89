package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// replica is one mesh-controlplane process.
type replica struct {
	name    string
	cmd     *exec.Cmd
	metrics string // host:port
	logFile string
	exited  chan struct{}
}

// buildBinary builds this command into a temp dir.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mesh-controlplane")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

func startReplica(t *testing.T, bin, name, cluster string) *replica {
	t.Helper()
	r := &replica{name: name, metrics: freeAddr(t), logFile: filepath.Join(t.TempDir(), name+".log"), exited: make(chan struct{})}
	log, err := os.Create(r.logFile)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(bin, "--name", name, "--cluster-name", cluster,
		"--etcd-endpoints", kube.Etcd.Endpoint(), "--kubeconfig", kube.Kubeconfig,
		"--metrics-address", r.metrics, "--lease-ttl", "2s", "--gc-interval", "-1s", "--log-level", "debug")
	r.cmd.Stdout, r.cmd.Stderr = log, log
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = r.cmd.Wait()
		_ = log.Close()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.kill()
		if t.Failed() {
			b, _ := os.ReadFile(r.logFile)
			t.Logf("%s's log:\n%s", name, b)
		}
	})
	return r
}

// kill sends SIGKILL to the process (by PID) and waits for it.
func (r *replica) kill() {
	_ = r.cmd.Process.Kill()
	<-r.exited
}

// metric returns the value of the series whose line starts with series.
func (r *replica) metric(series string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.metrics+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s: no series %s", r.name, series)
}

func (r *replica) logHas(s string) bool {
	b, _ := os.ReadFile(r.logFile)
	return strings.Contains(string(b), s)
}

func poll(t *testing.T, what string, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFailoverKill runs two mesh-controlplane processes against a real
// kube-apiserver and kills the leader (SIGKILL, by PID) during a burst of
// pod creations. The other takes over; every pod reaches etcd exactly
// once (version 1), and the new leader's writes are only the pods the old
// one had not written.
func TestFailoverKill(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	bin := buildBinary(t)
	cluster := etcdtest.Cluster(t)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	client := kube.Etcd.Client(t)
	rc, err := clientcmd.BuildConfigFromFlags("", kube.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 500, 500
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}

	const leaderSeries = "meshplane_controlplane_leader"
	a := startReplica(t, bin, "cp-a", cluster)
	poll(t, "cp-a leads", 2*time.Minute, func() error {
		v, err := a.metric(leaderSeries)
		if err == nil && v != 1 {
			err = errors.New("not the leader")
		}
		return err
	})
	b := startReplica(t, bin, "cp-b", cluster)
	poll(t, "cp-b synced and campaigning", 2*time.Minute, func() error {
		if !b.logHas("campaigning for leadership") {
			return errors.New("not yet")
		}
		return nil
	})

	ns := kube.Namespace(t)
	const n, killAt = 300, 100
	var created atomic.Int64
	create := func(from, to int) error {
		var wg sync.WaitGroup
		errs := make(chan error, to-from)
		work := make(chan int)
		for range 8 {
			wg.Go(func() {
				for i := range work {
					_, err := kc.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p-%03d", i), Labels: map[string]string{"app": "burst"}},
						Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%4),
							Containers: []corev1.Container{{Name: "c", Image: "c"}}},
					}, metav1.CreateOptions{})
					if err != nil {
						errs <- err
					}
					created.Add(1)
				}
			})
		}
		for i := from; i < to; i++ {
			work <- i
		}
		close(work)
		wg.Wait()
		close(errs)
		return <-errs
	}
	podKeys := func() ([]kvstore.KeyValue, error) {
		kvs, _, err := client.List(ctx, keys.PodsPrefix())
		var out []kvstore.KeyValue
		for _, kv := range kvs {
			if strings.Contains(kv.Key, "/"+ns+"/") {
				out = append(out, kv)
			}
		}
		return out, err
	}

	burst := make(chan error, 1)
	go func() { burst <- create(0, n) }()
	// Kill cp-a once it has written some pods and while pods are still
	// being created (and written: some may be in flight).
	poll(t, "cp-a writes", time.Minute, func() error {
		kvs, err := podKeys()
		if err == nil && (len(kvs) == 0 || created.Load() < killAt) {
			err = fmt.Errorf("%d created, %d in etcd", created.Load(), len(kvs))
		}
		return err
	})
	a.kill()
	killedAt := created.Load()
	before, err := podKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-burst; err != nil {
		t.Fatal(err)
	}
	if killedAt >= n {
		t.Fatalf("the burst ended before cp-a was killed; the test needs a longer burst")
	}

	poll(t, "every pod in etcd", 2*time.Minute, func() error {
		kvs, err := podKeys()
		if err == nil && len(kvs) != n {
			err = fmt.Errorf("%d of %d pods", len(kvs), n)
		}
		return err
	})
	if v, err := b.metric(leaderSeries); err != nil || v != 1 {
		t.Errorf("cp-b leader = %v, %v; want 1", v, err)
	}
	for i := range n {
		key := keys.Pod(fmt.Sprintf("node-%d", i%4), ns, fmt.Sprintf("p-%03d", i))
		resp, err := client.Etcd().Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 || resp.Kvs[0].Version != 1 {
			t.Errorf("%s: %v; want one key at version 1 (written once)", key, resp.Kvs)
		}
	}
	puts, err := b.metric(`meshplane_controlplane_writes_total{kind="pod",op="put"}`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cp-a killed after %d of %d pods were created; it had written at least %d; cp-b wrote %v", killedAt, n, len(before), puts)
	if int(puts) > n-len(before) || puts == 0 {
		t.Errorf("cp-b wrote %v pods; want between 1 and %d (those cp-a had not written)", puts, n-len(before))
	}
}
