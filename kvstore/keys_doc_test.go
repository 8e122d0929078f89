package kvstore_test

import (
	"os"
	"regexp"
	"slices"
	"testing"
)

// TestKeysDocumented holds the two tables of the key layout together: the
// one on kvstore.Keys (keys.go) and the one operators read
// (docs/kvstore.md) list the same keys.
func TestKeysDocumented(t *testing.T) {
	src, err := os.ReadFile("keys.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/kvstore.md")
	if err != nil {
		t.Fatal(err)
	}
	code := matches(`(?m)^//\t<root><cluster>/(\S+)`, src)
	docs := matches("(?m)^\\| `([a-z][a-z/<>-]*)`[^|]*\\|", doc)
	if len(code) == 0 || len(docs) == 0 {
		t.Fatalf("no key table found: %d keys in keys.go, %d in docs/kvstore.md", len(code), len(docs))
	}
	for _, k := range code {
		if !slices.Contains(docs, k) {
			t.Errorf("%s is in the table on Keys (keys.go) but not in docs/kvstore.md", k)
		}
	}
	for _, k := range docs {
		if !slices.Contains(code, k) {
			t.Errorf("%s is in docs/kvstore.md but not in the table on Keys (keys.go)", k)
		}
	}
}

func matches(expr string, b []byte) []string {
	var out []string
	for _, m := range regexp.MustCompile(expr).FindAllSubmatch(b, -1) {
		out = append(out, string(m[1]))
	}
	return out
}
