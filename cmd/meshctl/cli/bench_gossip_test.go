package cli

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestBenchGossip runs the gossip bench small. It is not parallel: it keeps
// the CPUs busy for a second, which other tests need not share.
func TestBenchGossip(t *testing.T) {
	out := mustRun(t, "bench", "gossip", "--members", "5", "--load-duration", "1s", "-o", "json")
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench gossip printed %q: %v", out, err)
	}
	for _, f := range []string{"false_positives", "false_suspects", "load_duration_s", "detect_first_s", "detect_p50_s", "load_cpu_busy_pct", "load_max_stall_ms"} {
		if _, ok := rep[f]; !ok {
			t.Errorf("field %s missing from %v", f, rep)
		}
	}
	if rep["members"] != float64(5) || rep["killed"] != float64(1) || rep["load_processes"] == float64(0) {
		t.Errorf("report %v: want 5 members, 1 killed and load processes", rep)
	}
	if d, _ := rep["detect_all_s"].(float64); d <= 0 || d >= 60 {
		t.Errorf("detect_all_s = %v", rep["detect_all_s"])
	}
	if l, _ := rep["load_duration_s"].(float64); l < 1 {
		t.Errorf("load_duration_s = %v, want at least 1", rep["load_duration_s"])
	}

	table := mustRun(t, "bench", "gossip", "--members", "3", "--load-duration", "0s")
	if !strings.HasPrefix(table, "METRIC") || !strings.Contains(table, "detect_all_s") {
		t.Errorf("table:\n%s", table)
	}
	for _, args := range [][]string{
		{"--members", "1"},
		{"--members", "3", "--kill", "3"},
		{"--load-duration", "-1s"},
		{"--probe-interval", "100ms", "--probe-timeout", "200ms"},
	} {
		if _, _, err := meshctl(t, append([]string{"bench", "gossip"}, args...)...); err == nil {
			t.Errorf("bench gossip %v: no error", args)
		}
	}
}
