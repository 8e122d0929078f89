package lab

import (
	"errors"
	"maps"
	"slices"
	"testing"
)

func TestParseLabelChange(t *testing.T) {
	ch, err := ParseLabelChange([]string{"app=web", "tier=", "old-", "a.b/c=d"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"app": "web", "tier": "", "a.b/c": "d"}; !maps.Equal(ch.Set, want) || !slices.Equal(ch.Remove, []string{"old"}) {
		t.Fatalf("ParseLabelChange = %+v", ch)
	}
	got := ch.apply(map[string]string{"app": "db", "old": "x", "keep": "y"})
	if want := map[string]string{"app": "web", "tier": "", "a.b/c": "d", "keep": "y"}; !maps.Equal(got, want) {
		t.Fatalf("apply = %v, want %v", got, want)
	}
	for _, bad := range [][]string{nil, {"novalue"}, {"=x"}, {"-"}} {
		if _, err := ParseLabelChange(bad); !errors.Is(err, ErrLabel) {
			t.Errorf("ParseLabelChange(%q) = %v, want ErrLabel", bad, err)
		}
	}
}
