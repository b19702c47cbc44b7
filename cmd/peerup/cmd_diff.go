package main

import (
	"github.com/spf13/cobra"

	"peerup/diff"
)

func (a *app) newDiffCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "diff OLD NEW PATCH",
		Short: "Write a BSDIFF40 patch that turns OLD into NEW",
		Long: `Writes a plain BSDIFF40 patch, the format of Debian's bsdiff 4.3: Debian's
bspatch applies it, and 'peerup patch' applies Debian's. PATCH is written
whole or not at all.`,
		Example: "  peerup diff libfoo.so.1.2 libfoo.so.1.3 libfoo.bsdiff",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return diff.MakeFiles(cmd.Context(), args[0], args[1], args[2])
		},
	}
}

func (a *app) newPatchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "patch OLD PATCH NEW",
		Short: "Apply a BSDIFF40 patch to OLD, writing NEW",
		Long: `Applies a plain BSDIFF40 patch (from 'peerup diff' or Debian's bsdiff). A
malformed or hostile patch is refused with an error; NEW is written whole or
not at all.`,
		Example: "  peerup patch libfoo.so.1.2 libfoo.bsdiff libfoo.so.1.3",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return diff.ApplyFiles(args[0], args[1], args[2])
		},
	}
}
