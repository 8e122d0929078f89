package cli

import "github.com/spf13/cobra"

// newPolicyCmd is a placeholder: being written.
func newPolicyCmd(*options) *cobra.Command {
	return &cobra.Command{Use: "policy", Hidden: true}
}
