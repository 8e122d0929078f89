package cli

import "github.com/spf13/cobra"

// newObserveCmd is a placeholder: being written.
func newObserveCmd(*options) *cobra.Command {
	return &cobra.Command{Use: "observe", Hidden: true}
}
