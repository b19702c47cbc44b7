package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newManCmd writes the manual pages, peerup.1 and one per verb, from the
// commands' own help: `make install` installs them, so the man page and
// --help never disagree. Hidden: it is for packaging, not for admins.
func (a *app) newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "Write the manual pages into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return fmt.Errorf("man: %w", err)
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true // the date would make every build differ
			// SOURCE_DATE_EPOCH, if set, dates the pages (reproducible builds).
			header := &doc.GenManHeader{Title: "PEERUP", Section: "1", Source: "peerup " + version(), Manual: "peerup manual"}
			if err := doc.GenManTree(root, header, args[0]); err != nil {
				return fmt.Errorf("man: %w", err)
			}
			return nil
		},
	}
}
