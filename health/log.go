package health

import (
	"context"
	"log/slog"
	"strings"
)

// logWriter is memberlist's log output. memberlist logs through a
// *log.Logger (here without prefix or flags), which calls Write once per
// line, under its own mutex: "[LEVEL] memberlist: message\n".
//
// It also watches for the one line that tells that this member's probe of
// another failed and it now suspects it: memberlist reports suspicion
// nowhere else (see doc.go, "Suspect").
type logWriter struct {
	log     *slog.Logger
	suspect func(name string) // must not block
}

func (w *logWriter) Write(p []byte) (int, error) {
	level, msg := parseLogLine(string(p))
	if name, ok := suspectFromLog(msg); ok && w.suspect != nil {
		w.suspect(name)
	}
	w.log.Log(context.Background(), level, "memberlist", "line", msg)
	return len(p), nil
}

// parseLogLine splits "[LEVEL] memberlist: message" into a slog level and
// the message. memberlist's [ERR] lines go to Warn: nearly all of them are
// about a peer that went away or a packet that did not arrive, trouble the
// protocol heals by itself, and Error is for what a person must act on.
// Lines without a known level are logged at Info, whole.
func parseLogLine(line string) (slog.Level, string) {
	line = strings.TrimRight(line, "\r\n")
	tag, rest, ok := strings.Cut(line, " ")
	if !ok || len(tag) < 3 || tag[0] != '[' || tag[len(tag)-1] != ']' {
		return slog.LevelInfo, line
	}
	var level slog.Level
	switch tag[1 : len(tag)-1] {
	case "DEBUG", "TRACE":
		level = slog.LevelDebug
	case "INFO":
		level = slog.LevelInfo
	case "WARN", "WARNING", "ERR", "ERROR":
		level = slog.LevelWarn
	default:
		return slog.LevelInfo, line
	}
	rest = strings.TrimPrefix(rest, "memberlist: ")
	return level, rest
}

// suspectFromLog returns the member named in memberlist's line for a
// failed probe, "Suspect <name> has failed, no acks received", logged just
// before it marks that member suspect.
func suspectFromLog(msg string) (string, bool) {
	rest, ok := strings.CutPrefix(msg, "Suspect ")
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, " has failed, no acks received")
	if !ok || validateName(name) != nil {
		return "", false
	}
	return name, true
}
