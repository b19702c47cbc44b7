package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/daemon"
)

func (a *app) newBootCmd() *cobra.Command {
	var sysroot, cmdlinePath string
	cmd := &cobra.Command{
		Use:   "boot --sysroot DIR [--cmdline FILE]",
		Short: "Choose the tree to boot (run early at boot, before switch_root)",
		Long: `Prints the path of the tree to boot, and nothing else on stdout. It picks
current, unless a revert was asked for ('peerup rollback --next-boot', or
peerup.revert=1 on the kernel command line, which a boot menu entry or a held
key can set), or the current version used up its boot tries without
'peerup mark-good': then it falls back to previous and marks that version
bad, so it is never applied again. This is the choice alone, for scripts and
for looking at a sysroot; at boot the initramfs runs peerup-boot, which makes
the same choice and mounts the tree as the root (README "Installing the boot
pieces", SPEC.md §12).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := apply.OpenExisting(sysroot)
			if err != nil {
				return err
			}
			cmdline, err := os.ReadFile(cmdlinePath)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			c, err := s.Boot(string(cmdline))
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "peerup: booting version %d: %s\n", c.Version, c.Reason)
			fmt.Println(c.Root)
			return nil
		},
	}
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "sysroot directory (required)")
	cmd.Flags().StringVar(&cmdlinePath, "cmdline", "/proc/cmdline", "file holding the kernel command line")
	cmd.MarkFlagRequired("sysroot")
	return cmd
}

func (a *app) newMarkGoodCmd() *cobra.Command {
	var sysroot, bootedFile string
	cmd := &cobra.Command{
		Use:   "mark-good --sysroot DIR",
		Short: "Confirm that the running version boots",
		Long: `Ends the probation of a newly applied version: the boot step stops counting
its tries. peerup-mark-good.service runs this once the system is up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := apply.OpenExisting(sysroot)
			if err != nil {
				return err
			}
			v, err := s.MarkGood(apply.BootedVersion(bootedFile))
			if errors.Is(err, apply.ErrNotBooted) {
				// A one-boot revert is a normal boot, not a failure.
				fmt.Println(err)
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Printf("version %d marked good\n", v)
			return nil
		},
	}
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "sysroot directory (required)")
	cmd.Flags().StringVar(&bootedFile, "booted", apply.BootedFile, "file where the boot step recorded the version it started")
	cmd.MarkFlagRequired("sysroot")
	return cmd
}

func (a *app) newGCCmd() *cobra.Command {
	var sysroot string
	var keep *daemon.ConfigFlags
	cmd := &cobra.Command{
		Use:   "gc --sysroot DIR",
		Short: "Remove versions, objects and encodings the node no longer needs",
		Long: `Keeps current, previous and staged, and removes everything else: other trees,
their manifests, the objects and files no kept version uses, encodings beyond
the budget, and leftovers of interrupted work. It takes the sysroot's lock,
so it is safe while the daemon runs (it waits for nothing: if the daemon is
busy it says so).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := apply.OpenExisting(sysroot)
			if err != nil {
				return err
			}
			var c daemon.Config
			keep.Apply(&c)
			res, err := s.GC(apply.EncodingBudgetMiB(*c.WithDefaults().KeepEncodingsMiB))
			if err != nil {
				return err
			}
			fmt.Printf("removed %d versions, %d objects and %d files, %s freed\n", len(res.Versions), res.Objects, res.Files, human(res.Bytes))
			return nil
		},
	}
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "sysroot directory (required)")
	keep = daemon.AddConfigFlags(cmd.Flags(), "keep-encodings-mib")
	cmd.MarkFlagRequired("sysroot")
	return cmd
}

func (a *app) newVerifyCmd() *cobra.Command {
	var sysroot, from string
	var repair bool
	cmd := &cobra.Command{
		Use:   "verify --sysroot DIR [--repair --from URL]",
		Short: "Check the kept trees and the store against their manifests (and repair them)",
		Long: `Checks current, previous and staged against their signed manifests: type,
mode, owner, symlink targets, devices, and every file's size and SHA-256. A
file edited in place through one tree shows in every tree that shares it by
hard link. The store is checked too: every object those versions need must be
there with the right bytes, or the laptop could not build, export or serve
them. With --repair, damaged or missing files and objects are fetched anew
from URL (or a folder holding a repo, such as a USB stick), checked against
the manifest, made durable and only then put in place, so an interrupted
repair loses nothing and a second run finishes it; exits non-zero if
problems remain.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := apply.OpenExisting(sysroot)
			if err != nil {
				return err
			}
			var probs []apply.Problem
			if repair {
				if from == "" {
					return errors.New("--repair needs --from URL to fetch good copies from")
				}
				src, err := apply.OpenSource(from)
				if err != nil {
					return err
				}
				if probs, err = s.Repair(cmd.Context(), src); err != nil {
					return err
				}
				for _, p := range probs {
					fmt.Printf("repaired %s\n", p)
				}
				if probs, err = s.Verify(cmd.Context()); err != nil {
					return err
				}
			} else if probs, err = s.Verify(cmd.Context()); err != nil {
				return err
			}
			for _, p := range probs {
				fmt.Println(p)
			}
			if len(probs) > 0 {
				return fmt.Errorf("%d problems found", len(probs))
			}
			fmt.Println("all kept trees, and the store objects they need, match their manifests")
			return nil
		},
	}
	cmd.Flags().StringVar(&sysroot, "sysroot", "", "sysroot directory (required)")
	cmd.Flags().BoolVar(&repair, "repair", false, "fetch good copies of damaged files and objects and put them back")
	cmd.Flags().StringVar(&from, "from", "", "with --repair: repo URL, or a folder holding a repo, to fetch from")
	cmd.MarkFlagRequired("sysroot")
	return cmd
}

// newHoldCmds are hold, unhold and unmark-bad: what an admin uses to keep
// a version off the laptop, or let one back on.
func (a *app) newHoldCmds() []*cobra.Command {
	verb := func(use, short, long string, args cobra.PositionalArgs, run func(s *apply.Sysroot, v uint64) (string, error)) *cobra.Command {
		var sysroot string
		cmd := &cobra.Command{
			Use: use, Short: short, Long: long, Args: args,
			RunE: func(cmd *cobra.Command, args []string) error {
				var v uint64
				if len(args) == 1 {
					var err error
					if v, err = strconv.ParseUint(args[0], 10, 64); err != nil || v == 0 {
						return fmt.Errorf("%q is not a version", args[0])
					}
				}
				s, err := apply.OpenExisting(sysroot)
				if err != nil {
					return err
				}
				msg, err := run(s, v)
				if err != nil {
					return err
				}
				fmt.Println(msg)
				return nil
			},
		}
		cmd.Flags().StringVar(&sysroot, "sysroot", "", "sysroot directory (required)")
		cmd.MarkFlagRequired("sysroot")
		return cmd
	}
	return []*cobra.Command{
		verb("hold --sysroot DIR VERSION", "Keep every version up to VERSION off this laptop",
			`No version up to VERSION is pulled or applied, by the daemon or by update,
until peerup unhold; a newer version still is. A rollback holds the version it
left by itself.`, cobra.ExactArgs(1),
			func(s *apply.Sysroot, v uint64) (string, error) {
				return fmt.Sprintf("versions up to %d held", v), s.Hold(v)
			}),
		verb("unhold --sysroot DIR", "Lift the hold", `Versions a hold kept off may be installed again.`, cobra.NoArgs,
			func(s *apply.Sysroot, _ uint64) (string, error) { return "hold lifted", s.Unhold() }),
		verb("unmark-bad --sysroot DIR VERSION", "Let a version that failed to boot be installed again",
			`A version that used up its boot tries is marked bad and never installed again;
this clears the mark (once what broke its boot is fixed).`, cobra.ExactArgs(1),
			func(s *apply.Sysroot, v uint64) (string, error) {
				return fmt.Sprintf("version %d is no longer marked bad", v), s.UnmarkBad(v)
			}),
	}
}
