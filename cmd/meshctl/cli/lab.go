package cli

import "github.com/spf13/cobra"

// newLabCmd is a placeholder: being written.
func newLabCmd(*options) *cobra.Command {
	return &cobra.Command{Use: "lab", Hidden: true}
}
