package labels

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is wrapped by every error that reports a malformed label,
// label set or filter pattern; test for it with errors.Is.
var ErrInvalid = errors.New("invalid label")

// invalidError carries a complete, human-readable message and unwraps to
// ErrInvalid, so the message need not repeat the sentinel's text.
type invalidError struct{ msg string }

func (e *invalidError) Error() string { return e.msg }
func (e *invalidError) Unwrap() error { return ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

const howToWrite = "write it as <source>:<key>=<value>, e.g. k8s:app=web"

// Label is one label: the source that asserted it (k8s, container,
// reserved, ...), a key and a possibly empty value.
type Label struct {
	Source, Key, Value string
}

// String returns the canonical form "source:key=value", or "source:key"
// when the value is empty. Parse(l.String()) returns l for every valid l.
func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

// Parse parses "source:key=value" or "source:key" (empty value). The source
// ends at the first ':' and the key at the first '='; any later ':' or '='
// makes the key or value invalid. "source:key=" is accepted as an empty
// value and prints back as "source:key".
func Parse(s string) (Label, error) {
	colon := strings.IndexByte(s, ':')
	if eq := strings.IndexByte(s, '='); colon <= 0 || (eq >= 0 && eq < colon) {
		return Label{}, invalidf("label %q: no source; %s", s, howToWrite)
	}
	l := Label{Source: s[:colon]}
	l.Key, l.Value, _ = strings.Cut(s[colon+1:], "=")
	if err := l.validate(s); err != nil {
		return Label{}, err
	}
	return l, nil
}

// Validate reports whether l satisfies the rules in the package
// documentation. The error wraps ErrInvalid.
func (l Label) Validate() error { return l.validate(l.String()) }

// validate checks l, naming it as input (the text the caller gave us).
func (l Label) validate(input string) error {
	if l.Source == "" {
		return invalidf("label %q: no source; %s", input, howToWrite)
	}
	if why := checkSource(l.Source); why != "" {
		return invalidf("label %q: %s", input, why)
	}
	if l.Key == "" {
		return invalidf("label %q: no key; %s", input, howToWrite)
	}
	if why := checkKey(l.Key); why != "" {
		return invalidf("label %q: %s", input, why)
	}
	if l.Value != "" {
		if why := checkName("value", l.Value, 63); why != "" {
			return invalidf("label %q: %s; an empty value is also allowed", input, why)
		}
	}
	return nil
}

func checkSource(s string) string {
	ok := s != "" && len(s) <= 32 && s[0] >= 'a' && s[0] <= 'z'
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	}
	if !ok {
		return fmt.Sprintf("source %q must be 1-32 characters of a-z, 0-9 and '-', starting with a letter, e.g. k8s", s)
	}
	return ""
}

// checkKey checks a Kubernetes-style key: [prefix/]name.
func checkKey(k string) string {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		return checkName("key", k, 63)
	}
	if strings.Contains(name, "/") {
		return fmt.Sprintf("key %q has more than one '/'; a key is [<prefix>/]<name>, e.g. app.kubernetes.io/name", k)
	}
	if !isDNSSubdomain(prefix) {
		return fmt.Sprintf("key prefix %q must be a DNS subdomain of at most 253 characters: dot-separated parts of a-z, 0-9 and '-', each starting and ending with a letter or digit, e.g. app.kubernetes.io", prefix)
	}
	return checkName("key name", name, 63)
}

// checkName checks the rule shared by key names and values: 1-max
// characters of [-A-Za-z0-9_.], alphanumeric at both ends. It returns why
// s is invalid, or "".
func checkName(what, s string, max int) string {
	const rule = "characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
	switch {
	case s == "":
		return fmt.Sprintf("%s is empty; it must be 1-%d %s", what, max, rule)
	case len(s) > max:
		return fmt.Sprintf("%s %q is %d characters long; shorten it to at most %d", what, s, len(s), max)
	}
	for _, r := range s {
		if !isAlnum(r) && r != '-' && r != '_' && r != '.' {
			why := fmt.Sprintf("%s %q contains %q; it must be 1-%d %s", what, s, r, max, rule)
			if strings.ContainsRune(",:=", r) {
				why += fmt.Sprintf(" (%q is a separator)", r)
			}
			return why
		}
	}
	if !isAlnum(rune(s[0])) || !isAlnum(rune(s[len(s)-1])) {
		return fmt.Sprintf("%s %q must start and end with a letter or digit", what, s)
	}
	return ""
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

func isDNSSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		if part == "" || part[0] == '-' || part[len(part)-1] == '-' {
			return false
		}
		for i := 0; i < len(part); i++ {
			if c := part[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return false
			}
		}
	}
	return true
}
