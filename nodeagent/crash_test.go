package nodeagent_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/nodeagent"
)

// The crash test runs this test binary again as a child (TestMain sees
// crashChildEnv) that is a real agent: it starts on the test's etcd, with
// real pinned maps, adds and deletes pods, and kills itself with SIGKILL
// right after one durable step of an add or a delete (the step hook of
// steps.go): no deferred function, no Close, the journal's last group
// commit up to 100ms old. The parent then applies what a power loss or
// an operator could add on top, restarts the agent, and checks that no two
// pods the agent has ever share an IP.
const crashChildEnv = "MESHPLANE_AGENT_CRASH_CHILD"

// crashPlan is one boot of the child.
type crashPlan struct {
	Node, Cluster, StateDir, APISocket string
	Etcd                               kvstore.Config
	Ops                                []crashOp
	// The child kills itself after the CrashSkip+1-th CrashStep, or after
	// its ops when CrashStep is empty.
	CrashStep string
	CrashSkip int
}

// crashOp is a CNI ADD or DEL of pod shop/<Pod>.
type crashOp struct {
	Delete bool
	Pod    string
}

func (o crashOp) String() string {
	if o.Delete {
		return "DEL " + o.Pod
	}
	return "ADD " + o.Pod
}

func killSelf() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// crashChild is the child's main. It prints, one write(2) per line:
//
//	BOOT <used> <conflicts> <unreferenced>   once the agent is up
//	STEP <step> <owner> <ip>                 after each durable step
//	ADD <owner> <ip> | DEL <owner>           when an op returned
//	ERR <message>                            and exits 3
func crashChild(planJSON string) {
	say := func(format string, args ...any) {
		if _, err := os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n"); err != nil {
			os.Exit(4)
		}
	}
	fail := func(format string, args ...any) {
		say("ERR "+format, args...)
		os.Exit(3)
	}
	var p crashPlan
	if err := json.Unmarshal([]byte(planJSON), &p); err != nil {
		fail("plan: %v", err)
	}
	seen := 0
	nodeagent.SetStepHook(func(step, owner string, ip netip.Addr) {
		say("STEP %s %s %s", step, owner, ip)
		if step == p.CrashStep {
			if seen == p.CrashSkip {
				killSelf()
			}
			seen++
		}
	})
	cfg := nodeagent.Config{
		Node: p.Node, Cluster: p.Cluster, ClusterID: 1, Etcd: p.Etcd, StateDir: p.StateDir,
		NodeIPs: []netip.Addr{netip.MustParseAddr("127.0.1.1")}, GossipAddr: netip.MustParseAddr("127.0.0.1"),
		GossipPort: -1, GossipInsecure: true, APISocket: p.APISocket, APISocketGroup: -1,
		Datapath: nodeagent.DatapathNone, RoutingMode: nodeagent.RoutingNone,
	}
	if os.Getenv("MESHPLANE_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", p.Node, "pid", os.Getpid())
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		fail("new: %v", err)
	}
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.After(30 * time.Second)
	for a.Status().State == "starting" {
		select {
		case err := <-done:
			fail("run: %v", err)
		case <-deadline:
			fail("still starting after 30s: %v", a.Status().Reasons)
		case <-time.After(10 * time.Millisecond):
		}
	}
	st := a.Status()
	say("BOOT %d %d %d", st.IPAM.Used, len(st.IPAM.Conflicts), st.IPAM.Unreferenced)
	for _, op := range p.Ops {
		if op.Delete {
			// A failed DEL is retried, as the kubelet does. (One fails
			// today when it races the restore of the endpoints' identity
			// references after a restart: "holds no reference to it".)
			err := a.DeleteEndpoint(ctx, "shop", op.Pod)
			for try := 0; err != nil && try < 3; try++ {
				fmt.Fprintf(os.Stderr, "DEL shop/%s failed, retrying: %v\n", op.Pod, err)
				err = a.DeleteEndpoint(ctx, "shop", op.Pod)
			}
			if err != nil {
				fail("%s: %v", op, err)
			}
			say("DEL shop/%s", op.Pod)
			continue
		}
		spec := nodeagent.EndpointSpec{Namespace: "shop", Pod: op.Pod, IfIndex: 1, Labels: map[string]string{"app": "web"}}
		ep, err := a.AddEndpoint(ctx, spec)
		if err != nil {
			fail("%s: %v", op, err)
		}
		say("ADD shop/%s %s", op.Pod, ep.IPs[0])
	}
	killSelf()
}

// crashSteps are the durable steps of an add and a delete, in order; ""
// is a kill after the ops, with nothing in flight.
var crashSteps = []string{
	"add:ip", "add:identity", "add:state-tmp", "add:state", "add:published",
	"remove:unpublished", "remove:identity", "remove:released", "remove:state", "",
}

// stepLine is a STEP line of the child.
type stepLine struct {
	step, owner string
	ip          netip.Addr
}

// crashWorld is the test's view of the node: where its records are, and
// what was acknowledged.
type crashWorld struct {
	t      *testing.T
	cfg    nodeagent.Config
	client *kvstore.Client
	keys   kvstore.Keys
	rng    *rand.Rand
	// acked are the pods whose ADD returned and whose DEL did not, with
	// their IPs.
	acked map[string]netip.Addr
}

func (w *crashWorld) endpointsDir() string { return filepath.Join(w.cfg.StateDir, "endpoints") }

// records are the node's state files (owner -> IPs) and its etcd entries
// (IP -> owner).
type records struct {
	files map[string][]netip.Addr
	etcd  map[netip.Addr]string
	raw   map[string][]byte // state file name -> content
	kvs   map[string][]byte // etcd key -> value
}

func (w *crashWorld) read() records {
	w.t.Helper()
	r := records{files: make(map[string][]netip.Addr), etcd: make(map[netip.Addr]string), raw: make(map[string][]byte), kvs: make(map[string][]byte)}
	names, err := filepath.Glob(filepath.Join(w.endpointsDir(), "*.json"))
	if err != nil {
		w.t.Fatal(err)
	}
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			w.t.Fatal(err)
		}
		var ep nodeagent.Endpoint
		if err := json.Unmarshal(b, &ep); err != nil {
			w.t.Fatalf("state file %s: %v", name, err)
		}
		r.files[ep.Namespace+"/"+ep.Pod] = ep.IPs
		r.raw[filepath.Base(name)] = b
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kvs, _, err := w.client.List(ctx, w.keys.EndpointsPrefix())
	if err != nil {
		w.t.Fatal(err)
	}
	for _, kv := range kvs {
		e, err := ipcache.Decode(strings.TrimPrefix(kv.Key, w.keys.EndpointsPrefix()), kv.Value)
		if err != nil || e.Node != w.cfg.Node {
			continue
		}
		r.etcd[e.IP] = e.Namespace + "/" + e.Pod
		r.kvs[kv.Key] = kv.Value
	}
	return r
}

// byIP returns every IP the records give a pod, with its owners.
func (r records) byIP() map[netip.Addr][]string {
	out := make(map[netip.Addr][]string)
	add := func(ip netip.Addr, owner string) {
		if !slices.Contains(out[ip], owner) {
			out[ip] = append(out[ip], owner)
		}
	}
	for owner, ips := range r.files {
		for _, ip := range ips {
			add(ip, owner)
		}
	}
	for ip, owner := range r.etcd {
		add(ip, owner)
	}
	return out
}

// check holds the property on the records: no IP has two owners, and an
// acknowledged pod whose state file survived keeps its IP.
func (w *crashWorld) check(when string, r records) {
	w.t.Helper()
	for ip, owners := range r.byIP() {
		if len(owners) > 1 {
			w.t.Errorf("%s: %s is held by %v", when, ip, owners)
		}
	}
	for owner, ip := range w.acked {
		ips, ok := r.files[owner]
		switch {
		case !ok:
			delete(w.acked, owner) // its state file was lost: it did not survive
		case len(ips) != 1 || ips[0] != ip:
			w.t.Errorf("%s: acknowledged pod %s had %s, its state file says %v", when, owner, ip, ips)
		}
	}
	// A pod the agent has is a pod later ops may delete (one whose ADD
	// was in flight, or whose state file a lost removal brought back).
	for owner, ips := range r.files {
		if _, ok := w.acked[owner]; !ok && len(ips) == 1 {
			w.acked[owner] = ips[0]
		}
	}
}

// journalEnd returns where the next boot's records start: after the last
// complete line (Open cuts a torn tail off), or after the header of a
// journal it will create.
func (w *crashWorld) journalEnd() int64 {
	b, err := os.ReadFile(journalPath(w.cfg))
	if errors.Is(err, os.ErrNotExist) {
		return int64(len("meshplane podip journal v1\n"))
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return int64(bytes.LastIndexByte(b, '\n') + 1)
}

// boot runs one child and returns its lines, after checking its BOOT line
// and its acknowledgements against the records it started from.
func (w *crashWorld) boot(plan crashPlan, before records, when string) (steps []stepLine, crashed bool) {
	w.t.Helper()
	planJSON, err := json.Marshal(plan)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+string(planJSON))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	held := before.byIP()
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		f := strings.Fields(line)
		switch f[0] {
		case "BOOT":
			used, _ := strconv.Atoi(f[1])
			if used < len(held) {
				w.t.Errorf("%s: IPAM used %d on start, but the records hold %d IPs", when, used, len(held))
			}
			if f[2] != "0" {
				w.t.Errorf("%s: %s conflicts on start", when, f[2])
			}
		case "STEP":
			s := stepLine{step: f[1], owner: f[2]}
			s.ip, _ = netip.ParseAddr(f[3])
			steps = append(steps, s)
		case "ADD":
			owner, ip := f[1], netip.MustParseAddr(f[2])
			for _, o := range held[ip] {
				if o != owner {
					w.t.Errorf("%s: %s got %s, which the records give %s", when, owner, ip, o)
				}
			}
			for o, a := range w.acked {
				if a == ip && o != owner {
					w.t.Errorf("%s: %s got %s, which acknowledged pod %s has", when, owner, ip, o)
				}
			}
			w.acked[owner] = ip
		case "DEL":
			delete(w.acked, f[1])
		case "ERR":
			w.t.Errorf("%s: child: %s", when, line)
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		w.t.Fatalf("%s: child ended with %v, not its SIGKILL; output:\n%s\nstderr:\n%s", when, err, strings.Join(lines, "\n"), stderr.String())
	}
	if w.t.Failed() {
		w.t.Fatalf("%s: output:\n%s\nstderr:\n%s", when, strings.Join(lines, "\n"), stderr.String())
	}
	return steps, plan.CrashStep != "" && len(steps) > 0 && steps[len(steps)-1].step == plan.CrashStep
}

// lastStep returns the last step among names, if any.
func lastStep(steps []stepLine, names ...string) (stepLine, bool) {
	for i := len(steps) - 1; i >= 0; i-- {
		if slices.Contains(names, steps[i].step) {
			return steps[i], true
		}
	}
	return stepLine{}, false
}

func stateFileName(owner string) string { return strings.ReplaceAll(owner, "/", "_") + ".json" }

// crashFault is what happens to the node's records after the kill.
type crashFault struct {
	name  string
	apply func(w *crashWorld, steps []stepLine, before records, journalStart int64)
}

// cutJournal truncates the journal inside the records this boot wrote:
// at a record boundary, or in the middle of a record (everything after
// the cut is lost too: a file system writes an appended file back in
// order).
func cutJournal(w *crashWorld, start int64, mid bool) {
	path := journalPath(w.cfg)
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) <= start {
		return
	}
	var starts []int64
	for off := start; off < int64(len(b)); {
		starts = append(starts, off)
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			break
		}
		off += int64(i) + 1
	}
	k := w.rng.IntN(len(starts))
	cut := starts[k]
	if mid {
		end := int64(len(b))
		if k+1 < len(starts) {
			end = starts[k+1]
		}
		cut += (end - cut) / 2
	}
	if err := os.Truncate(path, cut); err != nil {
		w.t.Fatal(err)
	}
}

func renameLost(w *crashWorld, steps []stepLine) {
	if s, ok := lastStep(steps, "add:state"); ok {
		p := filepath.Join(w.endpointsDir(), stateFileName(s.owner))
		_ = os.Rename(p, p+".tmp")
	}
}

func removalLost(w *crashWorld, steps []stepLine, before records) {
	if s, ok := lastStep(steps, "remove:state"); ok {
		name := stateFileName(s.owner)
		if b, ok := before.raw[name]; ok {
			if err := os.WriteFile(filepath.Join(w.endpointsDir(), name), b, 0o600); err != nil {
				w.t.Fatal(err)
			}
		}
	}
}

var crashFaults = []crashFault{
	{"process killed", func(*crashWorld, []stepLine, records, int64) {}},
	{"journal cut at a record boundary", func(w *crashWorld, _ []stepLine, _ records, start int64) { cutJournal(w, start, false) }},
	{"journal cut mid-record", func(w *crashWorld, _ []stepLine, _ records, start int64) { cutJournal(w, start, true) }},
	{"newest state file lost", func(w *crashWorld, steps []stepLine, _ records, _ int64) {
		if s, ok := lastStep(steps, "add:state"); ok {
			_ = os.Remove(filepath.Join(w.endpointsDir(), stateFileName(s.owner)))
		}
	}},
	{"newest state file's rename lost", func(w *crashWorld, steps []stepLine, _ records, _ int64) { renameLost(w, steps) }},
	{"temporary state file lost", func(w *crashWorld, _ []stepLine, _ records, _ int64) {
		tmps, _ := filepath.Glob(filepath.Join(w.endpointsDir(), "*.tmp"))
		for _, p := range tmps {
			_ = os.Remove(p)
		}
	}},
	{"state file removal lost", func(w *crashWorld, steps []stepLine, before records, _ int64) { removalLost(w, steps, before) }},
	{"last etcd write lost", func(w *crashWorld, steps []stepLine, before records, _ int64) {
		s, ok := lastStep(steps, "add:published", "remove:unpublished")
		if !ok {
			return
		}
		key := w.keys.Endpoint(ipcache.KeyOf(s.ip))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		if v, ok := before.kvs[key]; ok {
			lease, _ := os.ReadFile(filepath.Join(w.cfg.StateDir, "lease"))
			id, _ := strconv.ParseInt(strings.TrimSpace(string(lease)), 16, 64)
			err = w.client.Put(ctx, key, v, kvstore.WithLease(kvstore.LeaseID(id)))
		} else {
			err = w.client.Delete(ctx, key)
		}
		if err != nil {
			w.t.Fatal(err)
		}
	}},
	{"journal moved away", func(w *crashWorld, _ []stepLine, _ records, _ int64) {
		p := journalPath(w.cfg)
		_ = os.Rename(p, p+".corrupt-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	}},
	{"power loss", func(w *crashWorld, steps []stepLine, before records, start int64) {
		cutJournal(w, start, w.rng.IntN(2) == 0)
		renameLost(w, steps)
		removalLost(w, steps, before)
	}},
}

// TestAgentCrashNeverSharesIPs kills a real agent (a child process) after
// every durable step of a pod's add and delete in turn, adds what a power
// loss, a lost etcd write or an operator following the corrupt-journal
// advice does on top, restarts it and goes on; across every boot, no two
// pods the agent has (state files and etcd entries) share an IP, every new
// pod gets an IP nobody holds, acknowledged pods whose state file survived
// keep their IPs, and IPAM counts at least every IP the records hold.
// Seeded: MESHPLANE_CRASH_SEED replays another sequence.
func TestAgentCrashNeverSharesIPs(t *testing.T) {
	t.Parallel()
	bpftest.Require(t)
	seed := uint64(1)
	if s := os.Getenv("MESHPLANE_CRASH_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = n
	}
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(t)
	smallPool(t, client, cluster)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone
	w := &crashWorld{t: t, cfg: cfg, client: client, keys: keys, rng: rand.New(rand.NewPCG(seed, 0)), acked: make(map[string]netip.Addr)}

	// Every step with every fault would be 100 boots; 10 steps and 10
	// faults in two interleaved cycles give each step 4 different faults
	// and each fault 4 different steps.
	boots := 4 * len(crashSteps)
	if testing.Short() {
		boots = len(crashSteps)
	}
	var inflight []crashOp
	nextPod := 0
	newPod := func() crashOp { nextPod++; return crashOp{Pod: fmt.Sprintf("pod-%d", nextPod)} }
	pick := func(ops []crashOp) (crashOp, bool) {
		var can []string
		for owner := range w.acked {
			pod := strings.TrimPrefix(owner, "shop/")
			if !slices.ContainsFunc(ops, func(o crashOp) bool { return o.Pod == pod }) {
				can = append(can, pod)
			}
		}
		if len(can) == 0 {
			return crashOp{}, false
		}
		slices.Sort(can)
		return crashOp{Delete: true, Pod: can[w.rng.IntN(len(can))]}, true
	}
	last := "start"
	for i := 0; ; i++ {
		before := w.read()
		w.check("after "+last, before)
		if i == boots {
			break
		}
		step := crashSteps[i%len(crashSteps)]
		fault := crashFaults[(i+i/len(crashSteps))%len(crashFaults)]
		// The op in flight at the last kill is retried, as the kubelet
		// does; then a random op; then one that reaches the step.
		ops := slices.Clone(inflight)
		if del, ok := pick(ops); ok && w.rng.IntN(2) == 0 {
			ops = append(ops, del)
		} else {
			ops = append(ops, newPod())
		}
		if strings.HasPrefix(step, "remove:") {
			del, ok := pick(ops)
			if !ok {
				add := newPod()
				ops, del = append(ops, add), crashOp{Delete: true, Pod: add.Pod}
			}
			ops = append(ops, del)
		} else {
			ops = append(ops, newPod())
		}
		plan := crashPlan{
			Node: cfg.Node, Cluster: cfg.Cluster, StateDir: cfg.StateDir, APISocket: cfg.APISocket, Etcd: cfg.Etcd,
			Ops: ops, CrashStep: step,
		}
		start := w.journalEnd()
		when := fmt.Sprintf("boot %d (seed %d, ops %v, kill after %q)", i, seed, ops, step)
		steps, crashed := w.boot(plan, before, when)
		// What was in flight: the op the kill interrupted.
		inflight = nil
		if crashed {
			owner := steps[len(steps)-1].owner
			for _, op := range ops {
				if "shop/"+op.Pod == owner {
					inflight = []crashOp{op}
				}
			}
		}
		fault.apply(w, steps, before, start)
		last = fmt.Sprintf("%s, then %s", when, fault.name)
	}

	// A last start, in this process: the agent is ok, counts every IP,
	// and gives new pods IPs nobody holds; every pod's etcd entry names
	// it.
	final := w.read()
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	st := ta.a.Status()
	if held := len(final.byIP()); st.IPAM.Used < held || len(st.IPAM.Conflicts) != 0 {
		t.Errorf("after %s: IPAM used %d for %d held IPs, conflicts %v", last, st.IPAM.Used, held, conflictIPs(st.IPAM.Conflicts))
	}
	for owner, ip := range addPods(t, ta, 1000, 1003) {
		if owners := final.byIP()[ip]; len(owners) > 0 {
			t.Errorf("after %s: new pod %s got %s, which %v holds", last, owner, ip, owners)
		}
	}
	eventually(t, 10*time.Second, "every pod's etcd entry names it", func() error {
		r := w.read()
		for owner, ips := range r.files {
			for _, ip := range ips {
				if got := r.etcd[ip]; got != owner {
					return fmt.Errorf("endpoints/%s names %q, state file %s", ip, got, owner)
				}
			}
		}
		return nil
	})
	w.check("at the end", w.read())
}
