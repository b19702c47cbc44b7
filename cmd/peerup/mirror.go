package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

func (a *app) newMirrorCmd() *cobra.Command {
	var repoDir, from string
	var trust []string
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "mirror --repo REPO --from URL --trust PUBFILE... [--interval D]",
		Short: "Keep a local repo in step with an upstream repo (the school server's job)",
		Long: `Fetches every version the upstream repo (a national mirror, a CDN, a caching
proxy; any static web server) has and REPO lacks, checking each exactly as a
laptop does: the signature by a trusted key, the version rules, expiry, and
every object's hash. An expired version is passed over, and reported unless
a newer one is mirrored after it. A version is listed in REPO only once all of it is in place,
so a tampered or broken upstream leaves REPO at its last good state. With
--interval it repeats until stopped; otherwise it runs once. The upstream is
reached through the proxy http_proxy/https_proxy name (no_proxy excepted).`,
		Example: "  peerup mirror --repo /srv/peerup --from https://updates.example.org/fleet/ --trust fleet.pub --interval 15m",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			kr, err := manifest.LoadKeyring(trust...)
			if err != nil {
				return err
			}
			repo, err := blobstore.OpenRepo(repoDir)
			if err != nil {
				return err
			}
			up, err := transfer.NewClient(from, transfer.UpstreamHTTPClient())
			if err != nil {
				return err
			}
			for {
				res, err := apply.Mirror(cmd.Context(), repo, up, kr, a.log)
				if err != nil && interval == 0 {
					return err
				}
				if err != nil {
					a.log.Warn("mirror pass failed; keeping the last good state", "err", err)
				} else if len(res.Versions) == 0 {
					fmt.Println("up to date")
				} else {
					for _, v := range res.Versions {
						fmt.Printf("mirrored %s version %d\n", v.Image, v.Version)
					}
					fmt.Printf("fetched %d objects (%s)\n", res.Objects, human(res.Bytes))
				}
				if interval == 0 {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	cmd.Flags().StringVar(&repoDir, "repo", "", "local repo directory (required)")
	cmd.Flags().StringVar(&from, "from", "", "upstream repo URL (required)")
	cmd.Flags().StringSliceVar(&trust, "trust", nil, "trusted public key file; repeat for several (required)")
	cmd.Flags().DurationVar(&interval, "interval", 0, "repeat at this interval (default: run once)")
	for _, n := range []string{"repo", "from", "trust"} {
		cmd.MarkFlagRequired(n)
	}
	return cmd
}
