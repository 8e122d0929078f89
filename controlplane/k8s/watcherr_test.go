package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestWatchErrorHandler(t *testing.T) {
	gr := schema.GroupResource{Group: "networking.k8s.io", Resource: "networkpolicies"}
	other := errors.New("boom")
	for _, tc := range []struct {
		name string
		err  error
		want func(error) bool // nil: not passed on
	}{
		{"watch closed", io.EOF, nil},
		{"watch closed, wrapped", fmt.Errorf("watch: %w", io.EOF), nil},
		{"too old", apierrors.NewResourceExpired("too old resource version"), nil},
		{"forbidden", apierrors.NewForbidden(gr, "", errors.New("RBAC")), func(err error) bool {
			var pe *PermissionError
			return errors.As(err, &pe) && pe.Resource == "networkpolicies" && pe.Group == "networking.k8s.io" && apierrors.IsForbidden(err)
		}},
		{"other", other, func(err error) bool { return errors.Is(err, other) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got error
			watchErrorHandler("networking.k8s.io", "networkpolicies", func(_ string, err error) { got = err })(context.Background(), nil, tc.err)
			switch {
			case tc.want == nil && got != nil:
				t.Fatalf("passed on %v; want it dropped", got)
			case tc.want != nil && (got == nil || !tc.want(got)):
				t.Fatalf("passed on %v", got)
			}
		})
	}
}
