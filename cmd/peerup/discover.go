package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/daemon"
	"github.com/peerup/peerup/discovery"
	"github.com/peerup/peerup/manifest"
)

// startDiscovery wires the discovery package to a daemon.
func startDiscovery(ctx context.Context, cfg daemon.Config, image string, version uint64, port int, a *app) (daemon.Discovery, error) {
	var manifestOf func(uint64) manifest.Digest
	if cfg.Sysroot != "" {
		manifestOf = func(v uint64) manifest.Digest {
			return nodeManifest(cfg.Sysroot, image, v)
		}
	}
	s, err := discovery.Start(ctx, discovery.Config{
		Iface: cfg.Iface, Image: image, Version: version, Port: port, ManifestOf: manifestOf,
		NoMDNS: cfg.NoMDNS, NoMulticast: cfg.NoMulticast, Log: a.log,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (a *app) newDiscoverCmd() *cobra.Command {
	var iface, image string
	var count int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "discover [--iface IF] [--image ID] [--count N] [--timeout D]",
		Short: "List the peerup nodes on the LAN and their versions",
		Long: `Browses DNS-SD (mDNS) for _peerup._tcp and prints each node found, one per
line: URL, image, version. It stops after --count nodes or --timeout. It
advertises nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			s, err := discovery.Start(ctx, discovery.Config{Iface: iface, Image: image, NoMulticast: true, Log: a.log, Port: 0, Instance: ""})
			if err != nil {
				return err
			}
			defer s.Close()
			// Finding nothing because nothing could be heard is an error,
			// not an empty LAN.
			if s.Listening() == 0 {
				return fmt.Errorf("discover: cannot listen for mDNS on any interface: none is up, multicast-capable and has an IPv4 address, or joining 224.0.0.251 failed on each (see the warnings above)")
			}
			seen := map[string]bool{}
			for {
				for _, p := range s.List() {
					if !seen[p.URL] {
						seen[p.URL] = true
						fmt.Printf("%s %s %d\n", p.URL, p.Image, p.Version)
					}
				}
				if count > 0 && len(seen) >= count {
					return nil
				}
				select {
				case <-ctx.Done():
					if count > 0 {
						return fmt.Errorf("found %d of %d nodes in %s", len(seen), count, timeout)
					}
					return nil
				case <-s.Found():
				}
			}
		},
	}
	cmd.Flags().StringVar(&iface, "iface", "", "interface to browse on (default: all)")
	cmd.Flags().StringVar(&image, "image", "", "only nodes of this image")
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many nodes")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "stop after this long")
	return cmd
}

// nodeManifest is the hash of a version's manifest in a node's repo, for
// announcements; zero if unknown.
func nodeManifest(sysroot, image string, v uint64) manifest.Digest {
	s, err := apply.OpenExisting(sysroot)
	if err != nil {
		return manifest.Digest{}
	}
	ix, err := s.Repo().ReadIndex()
	if err != nil {
		return manifest.Digest{}
	}
	e, _ := ix.Find(image, v)
	return e.Manifest
}
