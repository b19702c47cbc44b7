package main

import (
	"github.com/spf13/cobra"

	"github.com/peerup/peerup/diff"
)

func newDiffCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "diff OLD NEW PATCH",
		Short: "Write a BSDIFF40 patch that turns OLD into NEW",
		Long: `Writes a plain BSDIFF40 patch, the format of Debian's bsdiff 4.3: Debian's
bspatch applies it, and 'peerup patch' applies Debian's patches.

Making a patch takes about 20 times OLD's size in memory, and time that grows
quadratically with long runs of identical bytes; interrupt it with Ctrl-C.
NEW may be at most 1 GiB. PATCH is written whole or not at all.`,
		Example: `  peerup diff libfoo.so.1.2 libfoo.so.1.3 libfoo.bsdiff
  bspatch libfoo.so.1.2 libfoo.check libfoo.bsdiff   # Debian's tool agrees`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return diff.MakeFiles(cmd.Context(), args[0], args[1], args[2])
		},
	}
}

func newPatchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "patch OLD PATCH NEW",
		Short: "Apply a BSDIFF40 patch to OLD, writing NEW",
		Long: `Applies a plain BSDIFF40 patch, from 'peerup diff' or Debian's bsdiff 4.3.

The patch is checked before it is used: a malformed or hostile patch is
refused with an error saying what is wrong, and an output over 1 GiB is
refused. NEW gets OLD's permission bits and is written whole or not at all.
Nothing here authenticates the patch: compare NEW's checksum with the one
you expect.`,
		Example: `  peerup patch libfoo.so.1.2 libfoo.bsdiff libfoo.so.1.3
  sha256sum libfoo.so.1.3`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return diff.ApplyFiles(args[0], args[1], args[2])
		},
	}
}

// The root command in main.go wires the verbs as methods of app; these
// keep it building until it calls the functions above directly.
func (a *app) newDiffCmd() *cobra.Command  { return newDiffCmd() }
func (a *app) newPatchCmd() *cobra.Command { return newPatchCmd() }
