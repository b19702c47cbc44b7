package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/daemon"
	"github.com/peerup/peerup/manifest"
)

// listFlags are the flags of the admin verbs that sign an image's lists
// (withdraw, rollout) with a fleet key.
type listFlags struct{ repo, image, key string }

func (l *listFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&l.repo, "repo", "", "repository directory (required)")
	f.StringVar(&l.image, "image", "", "image id (required)")
	f.StringVar(&l.key, "key", "", "secret signing key file, a fleet key (required)")
	for _, n := range []string{"repo", "image", "key"} {
		cmd.MarkFlagRequired(n)
	}
}

// open reads the verb's VERSION argument and opens the repo and the key.
func (l *listFlags) open(verb, version string) (*blobstore.Repo, uint64, *manifest.Signer, error) {
	v, err := strconv.ParseUint(version, 10, 64)
	if err != nil || v == 0 {
		return nil, 0, nil, fmt.Errorf("%s: version %q: want a positive number", verb, version)
	}
	signer, err := manifest.LoadSigner(l.key)
	if err != nil {
		return nil, 0, nil, err
	}
	if err := blobstore.CheckRepo(l.repo); err != nil {
		return nil, 0, nil, err
	}
	repo, err := blobstore.OpenRepo(l.repo)
	if err != nil {
		return nil, 0, nil, err
	}
	return repo, v, signer, nil
}

// parsePercent reads a share of machines: 0 to 100, with or without "%".
func parsePercent(s string) (int, error) {
	p, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
	if err != nil || p < 0 || p > 100 {
		return 0, fmt.Errorf("rollout: %q: want a percent of machines from 0 to 100", s)
	}
	return p, nil
}

func (a *app) newRolloutCmd() *cobra.Command {
	var l listFlags
	cmd := &cobra.Command{
		Use:   "rollout --repo REPO --image ID --key KEYFILE VERSION PERCENT",
		Short: "Send a published version to a share of the machines, or raise the share",
		Long: `Signs, in the image's rollout list, that VERSION goes to PERCENT of the
machines (0 to 100). Each machine's place in a version's rollout comes from
a hash of its machine id and the version (SPEC.md §3), so the same machines
go first and stay in as the share is raised. Machines left out still fetch
the version and serve it to their neighbours, but do not apply it until the
share reaches them. No tree is published again: laptops, seeds and mirrors
pass the signed list on. 'peerup publish --rollout P' starts a version at P.`,
		Example: "  peerup rollout --repo /srv/peerup --image school-laptop --key fleet.key 7 50\n  peerup rollout --repo /srv/peerup --image school-laptop --key fleet.key 7 100",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pct, err := parsePercent(args[1])
			if err != nil {
				return err
			}
			repo, v, signer, err := l.open("rollout", args[0])
			if err != nil {
				return err
			}
			ro, err := repo.SetRollout(l.image, v, pct, signer)
			if err != nil {
				return err
			}
			fmt.Printf("%s version %d goes to %d%% of machines (rollout list seq %d)\n", l.image, v, ro.Percent(v), ro.Seq)
			return nil
		},
	}
	l.register(cmd)
	return cmd
}

// rolloutLine says where the daemon's machine stands in the offer's
// rollout.
func rolloutLine(p daemon.Props) string {
	if p.RolloutWaiting {
		return fmt.Sprintf("%d%% of machines so far, not yet this one: it is fetched and served, not applied", p.RolloutPercent)
	}
	return fmt.Sprintf("%d%% of machines so far, this one among them", p.RolloutPercent)
}
