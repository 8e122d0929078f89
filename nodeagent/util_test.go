package nodeagent_test

import (
	"encoding/json"
	"slices"

	"github.com/meshplane/meshplane/identity"
)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func sortStrings(s []string) []string { return slices.Sorted(slices.Values(s)) }

func identityOf(id uint32) identity.ID { return identity.ID(id) }
