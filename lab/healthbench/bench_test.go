package healthbench

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/lab/cpuload"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Nodes) != 2 || c.Duration != DefaultDuration || c.Crashes != DefaultCrashes || c.Pauses != DefaultPauses ||
		c.Restarts != DefaultRestarts || c.Pause != DefaultPause || c.RestartDown != DefaultRestartDown || c.LoadProcs != cpuload.DefaultProcs() {
		t.Fatalf("defaults: %+v", c)
	}
	none, err := Config{Crashes: -1, Pauses: -1, Restarts: -1, LoadProcs: -1}.withDefaults()
	if err != nil || none.Crashes != 0 || none.Pauses != 0 || none.Restarts != 0 || none.LoadProcs != 0 {
		t.Fatalf("negative means none: %+v, %v", none, err)
	}
	for _, tt := range []struct {
		c    Config
		want string
	}{
		{Config{Nodes: []int{1}}, "2-8"},
		{Config{Nodes: []int{9}}, "2-8"},
		{Config{Nodes: []int{2, 2, 2, 2, 2}}, "at most 4"},
		{Config{Duration: 2 * time.Hour}, "duration"},
		{Config{Crashes: 1001}, "at most 1000"},
		{Config{Pause: -time.Second}, "pause"},
		{Config{RestartDown: time.Hour}, "restart downtime"},
		{Config{LoadProcs: 1000}, "load processes"},
	} {
		if _, err := tt.c.withDefaults(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an ErrConfig saying %q", tt.c, err, tt.want)
		}
	}
}

func TestTopology(t *testing.T) {
	topo := topology(labName(3), 3)
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	c := topo.Clusters[0]
	if len(c.Nodes) != 3 || len(c.Services) != 4 || len(c.Nodes[0].Pods) != 2 || len(c.Nodes[2].Pods) != 1 {
		t.Fatalf("topology: %+v", c)
	}
	if s := c.Services[2]; s.Name != "web-n2" || s.ClusterIP != serviceIP(2).String() || s.Selector["node"] != "n2" {
		t.Errorf("service of n2: %+v", s)
	}
	if len(labName(8)) > 16 {
		t.Errorf("lab name %s is too long", labName(8))
	}
	if serviceTarget(1).String() != "10.96.0.11:80" {
		t.Errorf("service of n1 at %s", serviceTarget(1))
	}
}

// TestFalseRemovals checks the accounting: removals of a crashed node
// within its window are expected, every other one is false.
func TestFalseRemovals(t *testing.T) {
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	p := &poller{removals: []removal{
		{pair{"n1", "n2"}, at(1)},  // steady: false
		{pair{"n1", "n2"}, at(10)}, // crash of n2: expected
		{pair{"n3", "n2"}, at(11)}, // crash of n2: expected
		{pair{"n1", "n3"}, at(11)}, // another node during n2's crash: false
		{pair{"n1", "n2"}, at(30)}, // after the window: false
	}}
	expected := []window{{node: "n2", from: at(10), to: at(20)}}
	if n := p.falseRemovals(expected); n != 3 {
		t.Errorf("%d false removals, want 3", n)
	}
	p.maps = map[string]nodeMaps{"n1": {}, "n2": {}, "n3": {}}
	if last, ok := p.gone("n2", at(5)); !ok || !last.Equal(at(11)) {
		t.Errorf("n2 gone since +5s: %v, %v; want at +11s", last, ok)
	}
	if _, ok := p.gone("n3", at(5)); ok {
		t.Error("n3 gone from every node, but n2 never removed it")
	}
}

func TestPercentiles(t *testing.T) {
	d := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
	p50, p99, m := percentiles(d)
	if p50 != 2000 || p99 != 3000 || m != 3000 {
		t.Errorf("percentiles %v %v %v", p50, p99, m)
	}
	if a, b, c := percentiles(nil); a != 0 || b != 0 || c != 0 {
		t.Errorf("percentiles of none: %v %v %v", a, b, c)
	}
}
