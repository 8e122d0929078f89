package health

import (
	"log/slog"
	"testing"
)

func TestParseLogLine(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:5\n", slog.LevelDebug, "Stream connection from=127.0.0.1:5"},
		{"[INFO] memberlist: Marking n1 as failed\n", slog.LevelInfo, "Marking n1 as failed"},
		{"[WARN] memberlist: Refuting a suspect message (from: n2)\n", slog.LevelWarn, "Refuting a suspect message (from: n2)"},
		{"[ERR] memberlist: Failed fallback TCP ping: EOF\n", slog.LevelWarn, "Failed fallback TCP ping: EOF"},
		{"[ERR] Failed to shutdown transport: x\n", slog.LevelWarn, "Failed to shutdown transport: x"},
		{"no level here\n", slog.LevelInfo, "no level here"},
		{"[FOO] memberlist: x\n", slog.LevelInfo, "[FOO] memberlist: x"},
	} {
		level, msg := parseLogLine(tt.line)
		if level != tt.level || msg != tt.msg {
			t.Errorf("parseLogLine(%q) = %v %q, want %v %q", tt.line, level, msg, tt.level, tt.msg)
		}
	}
}

func TestSuspectFromLog(t *testing.T) {
	t.Parallel()
	for line, want := range map[string]string{
		"Suspect node-3 has failed, no acks received": "node-3",
		"Suspect node 3 has failed, no acks received": "",
		"Suspect  has failed, no acks received":       "",
		"Suspect node-3 has failed":                   "",
		"Marking node-3 as failed, suspect timeout":   "",
	} {
		got, ok := suspectFromLog(line)
		if got != want || ok != (want != "") {
			t.Errorf("suspectFromLog(%q) = %q, %v; want %q", line, got, ok, want)
		}
	}
}
