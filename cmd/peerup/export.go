package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

func (a *app) newExportCmd() *cobra.Command {
	var repoDir, sysroot, image string
	var targets, trust []string
	var version, from uint64
	var memMiB int
	var asJSON, anyOwner bool
	cmd := &cobra.Command{
		Use:   "export (--repo REPO | --sysroot DIR) --to DIR [--to DIR]... [--from-version N] [--version M]",
		Short: "Write a version onto USB sticks, for schools without a network link",
		Long: `Writes a self-contained repo holding one signed version (the newest unless
--version says) to each --to folder, such as a mounted USB stick: the signed
manifest, the signed delta index, and the objects. 'peerup update --from DIR'
updates a laptop from it, and a daemon with --volume finds it when the stick
is mounted. With --from-version N only what laptops at version N or later
lack goes on the stick, as patches against the files they hold where that is
smaller and they can decode it within --memory-mib.

Each object is read once and written to every stick at once; each stick is
then synced and read back. A stick that fails (full, pulled out) is reported
and the others finish; a failed stick is left without its index and marker,
so it is never taken for a repo. Each folder must be empty or hold an
earlier export; other files on a stick are left alone.

--repo exports from a publisher's or a mirror's repo, --sysroot from what a
laptop holds (its manifests, kept patches and objects). --trust has the
signatures checked before anything is written.`,
		Example: "  peerup export --repo /srv/peerup --to /media/stick1 --to /media/stick2\n  peerup export --sysroot /sysroot --from-version 41 --to /media/stick",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := repoDir
			if (repoDir == "") == (sysroot == "") {
				return errors.New("give --repo or --sysroot (one of them)")
			}
			check := blobstore.CheckRepo
			if sysroot != "" {
				// Not apply.Open: that would create a sysroot where there is none.
				dir, check = apply.RepoDir(sysroot), func(string) error { return apply.CheckSysroot(sysroot) }
			}
			if err := check(dir); err != nil {
				return err
			}
			src, err := blobstore.OpenRepo(dir)
			if err != nil {
				return err
			}
			var kr *manifest.Keyring
			if len(trust) > 0 {
				if kr, err = manifest.LoadKeyring(trust...); err != nil {
					return err
				}
			}
			prog, clear := exportProgress(targets)
			res, err := apply.Export(cmd.Context(), src, targets, apply.ExportOptions{
				Image: image, Version: version, FromVersion: from, Trust: kr, Progress: prog, Log: a.log, AnyOwner: anyOwner,
				Memory: apply.MemoryMiB(memMiB),
			})
			clear()
			if res == nil {
				return err
			}
			if asJSON {
				type target struct {
					Dir   string `json:"dir"`
					Error string `json:"error,omitempty"`
				}
				out := struct {
					*apply.ExportResult
					Targets []target `json:"targets"`
				}{ExportResult: res}
				for _, t := range res.Targets {
					tj := target{Dir: t.Dir}
					if t.Err != nil {
						tj.Error = t.Err.Error()
					}
					out.Targets = append(out.Targets, tj)
				}
				if perr := printJSON(out); perr != nil {
					return perr
				}
			}
			failed := 0
			for _, t := range res.Targets {
				if t.Err != nil {
					failed++
					fmt.Fprintf(os.Stderr, "peerup: %v\n", t.Err)
				} else if !asJSON {
					fmt.Printf("exported %s version %d to %s: %d objects (%d encodings), %s, read back and checked\n",
						res.Image, res.Version, t.Dir, res.Objects, res.Encodings, human(res.Bytes))
				}
			}
			if cerr := cmd.Context().Err(); cerr != nil {
				return cerr // interrupted: exit 130, as every verb does
			}
			if failed > 0 {
				return fmt.Errorf("export failed on %d of %d targets", failed, len(res.Targets))
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&repoDir, "repo", "", "export from this repo (a publisher's or a mirror's)")
	f.StringVar(&sysroot, "sysroot", "", "export what this laptop's sysroot holds")
	f.StringSliceVar(&targets, "to", nil, "folder to write the repo to, e.g. a mounted stick; repeat for several (required)")
	f.StringVar(&image, "image", "", "image id (default: the source's only one)")
	f.Uint64Var(&version, "version", 0, "version to export (default: the newest)")
	f.Uint64Var(&from, "from-version", 0, "export only what a laptop at this version lacks (default: every object)")
	f.IntVar(&memMiB, "memory-mib", apply.DefaultMemoryMiB, "with --from-version: the smallest memory-mib of the laptops the stick is for; a patch they could not decode within it goes whole")
	f.StringSliceVar(&trust, "trust", nil, "check the signatures against this public key file first; repeat for several")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.BoolVar(&anyOwner, "any-owner", false, "write to a folder owned by another user (who could plant links in it while the export runs)")
	cmd.MarkFlagRequired("to")
	return cmd
}

// exportProgress draws one progress line per target, on a terminal only,
// and returns the export's progress callback and a function that blanks
// the lines.
func exportProgress(targets []string) (func(i int, done, total int64), func()) {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil, func() {}
	}
	width := 0
	for _, t := range targets {
		width = max(width, len(t))
	}
	l := newLines(os.Stderr, len(targets))
	start := time.Now()
	meters := make([]meter, len(targets))
	for i, t := range targets {
		meters[i] = meter{what: fmt.Sprintf("%-*s", width, t), after: "reading it back", start: start}
	}
	return func(i int, done, total int64) { l.set(i, meters[i].line(done, total, time.Now()), done >= total) }, l.clear
}
