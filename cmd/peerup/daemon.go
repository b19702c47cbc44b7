package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"peerup/apply"
	"peerup/daemon"
	"peerup/transfer"
)

const defaultConfig = "/etc/peerup/peerup.toml"

func (a *app) newDaemonCmd() *cobra.Command {
	var cfgPath string
	var keepMiB int64
	var flagCfg daemon.Config
	cmd := &cobra.Command{
		Use:   "daemon (--sysroot DIR | --repo REPO) --trust PUBFILE... [--listen ADDR] [--bus system|session|none|ADDRESS] [--policy auto|download|notify] [--peer URL]... [--volume DIR]... [--config FILE]",
		Short: "Run the background updater",
		Long: `Serves this node's repo to its neighbours, looks for newer signed versions
(on the peers given with --peer, and as discovery reports them), fetches them
in the background and acts by policy:

  auto      fetch, stage and switch at once (previous is kept)
  download  fetch and stage, then signal UpdateReady and wait for Apply
  notify    only signal that an update is available

A --volume folder is watched for a USB stick written by 'peerup export': when
one is mounted there, the daemon updates from it like from a peer, checking
every byte just as strictly.

The desktop and 'peerup status/check/fetch/apply' talk to it over D-Bus
(org.peerup.Updater1). Settings come from --config (default ` + defaultConfig + `,
if present); flags override it. One daemon runs per sysroot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := daemon.Config{}
			path := cfgPath
			if path == "" {
				if _, err := os.Stat(defaultConfig); err == nil {
					path = defaultConfig
				}
			}
			if path != "" {
				var err error
				if cfg, err = daemon.LoadConfig(path); err != nil {
					return err
				}
			}
			f := cmd.Flags()
			override := func(name string, apply func()) {
				if f.Changed(name) {
					apply()
				}
			}
			override("sysroot", func() { cfg.Sysroot = flagCfg.Sysroot })
			override("trust", func() { cfg.Trust = flagCfg.Trust })
			override("listen", func() { cfg.Listen = flagCfg.Listen })
			override("bus", func() { cfg.Bus = flagCfg.Bus })
			override("policy", func() { cfg.Policy = flagCfg.Policy })
			override("peer", func() { cfg.Peers = flagCfg.Peers })
			override("volume", func() { cfg.Volumes = flagCfg.Volumes })
			override("scan-mounts", func() { cfg.ScanMounts = flagCfg.ScanMounts })
			override("poll-interval", func() { cfg.PollInterval = flagCfg.PollInterval })
			override("boot-tries", func() { cfg.BootTries = flagCfg.BootTries })
			override("iface", func() { cfg.Iface = flagCfg.Iface })
			override("no-mdns", func() { cfg.NoMDNS = flagCfg.NoMDNS })
			override("no-multicast", func() { cfg.NoMulticast = flagCfg.NoMulticast })
			override("no-p2p", func() { cfg.NoP2P = flagCfg.NoP2P })
			override("max-conns-per-peer", func() { cfg.MaxConnsPerPeer = flagCfg.MaxConnsPerPeer })
			override("keep-encodings-mib", func() { cfg.KeepEncodingsMiB = &keepMiB })
			override("max-uploads", func() { cfg.MaxUploads = flagCfg.MaxUploads })
			override("max-upload-rate", func() { cfg.MaxUploadRate = flagCfg.MaxUploadRate })
			override("max-download-rate", func() { cfg.MaxDownloadRate = flagCfg.MaxDownloadRate })
			override("memory-mib", func() { cfg.MemoryMiB = flagCfg.MemoryMiB })
			// Process-wide, so set here rather than in the daemon package,
			// whose tests run several daemons in one process.
			debug.SetMemoryLimit(apply.MemoryMiB(cfg.MemoryMiB).SoftLimit())
			newDisc := func(image string, version uint64, port int) (daemon.Discovery, error) {
				if cfg.NoMDNS && cfg.NoMulticast {
					return nil, nil
				}
				return startDiscovery(cmd.Context(), cfg, image, version, port, a)
			}
			override("repo", func() { cfg.Repo = flagCfg.Repo })
			override("image", func() { cfg.Image = flagCfg.Image })
			if cfg.Repo != "" {
				if cfg.Sysroot != "" {
					return errors.New("give --sysroot (a laptop) or --repo (a seed), not both")
				}
				seed, err := daemon.StartSeed(cmd.Context(), cfg, newDisc, a.log)
				if err != nil {
					return err
				}
				seed.Wait(cmd.Context())
				return nil
			}
			d, err := daemon.Start(cmd.Context(), cfg, newDisc, a.log)
			if err != nil {
				return err
			}
			a.log.Info("daemon running", "sysroot", cfg.Sysroot, "serving", d.Addr.String())
			d.Wait(cmd.Context())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "TOML config file (default "+defaultConfig+" if it exists)")
	f.StringVar(&flagCfg.Sysroot, "sysroot", "", "sysroot directory (a laptop)")
	f.IntVar(&flagCfg.MemoryMiB, "memory-mib", apply.DefaultMemoryMiB, "memory an update may use, in MiB (SPEC.md §7)")
	f.StringVar(&flagCfg.Repo, "repo", "", "seed this repo instead: serve and advertise it, announce each new version (a school server)")
	f.StringVar(&flagCfg.Image, "image", "", "with --repo: the image to advertise, if the repo holds several")
	f.StringSliceVar(&flagCfg.Trust, "trust", nil, "trusted public key file; repeat for several")
	f.StringVar(&flagCfg.Listen, "listen", transfer.DefaultListen, "address to serve this node's repo on")
	f.StringVar(&flagCfg.Bus, "bus", "system", "D-Bus to export the API on: system, session, none, or an address")
	f.StringVar(&flagCfg.Policy, "policy", "auto", "what to do with an update: auto, download or notify")
	f.StringSliceVar(&flagCfg.Peers, "peer", nil, "repo URL to ask for updates (e.g. the school server); repeat for several")
	f.StringSliceVar(&flagCfg.Volumes, "volume", nil, "folder where a USB stick from 'peerup export' may be mounted; watched, and updated from like a peer; repeat for several")
	f.BoolVar(&flagCfg.ScanMounts, "scan-mounts", false, "also look for exported repos on every mount under /media, /run/media and /mnt")
	f.StringVar(&flagCfg.Iface, "iface", "", "discover and advertise on this interface only (default: all)")
	f.BoolVar(&flagCfg.NoMDNS, "no-mdns", false, "do not advertise or browse with mDNS/DNS-SD")
	f.IntVar(&flagCfg.MaxUploads, "max-uploads", 8, "concurrent uploads to neighbours; more get 503 and go elsewhere")
	f.Int64Var(&flagCfg.MaxUploadRate, "max-upload-rate", 0, "upload budget in bytes per second (0: none)")
	f.Int64Var(&flagCfg.MaxDownloadRate, "max-download-rate", 0, "download budget in bytes per second (0: none)")
	f.Int64Var(&keepMiB, "keep-encodings-mib", apply.DefaultEncodingBudget>>20, "MiB of fetched patches to keep for neighbours (0: none; -1: no limit)")
	f.BoolVar(&flagCfg.NoMulticast, "no-multicast", false, "do not send or hear per-version multicast announcements")
	f.IntVar(&flagCfg.MaxConnsPerPeer, "max-conns-per-peer", 0, "connections open at once from one address (default 16; -1: no cap); raise it when many nodes share an address")
	f.BoolVar(&flagCfg.NoP2P, "no-p2p", false, "client-server mode: fetch only from --peer (the school server), never from or for neighbours")
	f.IntVar(&flagCfg.BootTries, "boot-tries", 3, "boots an applied version gets to reach mark-good")
	f.DurationVar(&flagCfg.PollInterval, "poll-interval", 0, "also ask the peers on this interval (default: only when discovery says so)")
	return cmd
}

// dialDaemon reaches a running daemon, saying clearly when there is none.
func dialDaemon(bus string) (*daemon.Client, error) {
	c, err := daemon.Dial(bus)
	if err != nil {
		return nil, fmt.Errorf("%w (start 'peerup daemon', or give --sysroot to work on a sysroot directly)", err)
	}
	return c, nil
}

func (a *app) newCheckCmd() *cobra.Command {
	var bus string
	cmd := &cobra.Command{
		Use:   "check [--bus BUS]",
		Short: "Ask the running daemon to look for an update now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return viaDaemon(cmd, bus, daemon.MethodPoll)
		},
	}
	cmd.Flags().StringVar(&bus, "bus", "system", "the daemon's bus: system, session or an address")
	return cmd
}

func (a *app) newFetchCmd() *cobra.Command {
	var bus string
	cmd := &cobra.Command{
		Use:   "fetch [--bus BUS]",
		Short: "Ask the running daemon to fetch and stage the available update",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := dialDaemon(bus)
			if err != nil {
				return err
			}
			defer c.Close()
			prog, clear := progress("fetching")
			p, err := c.CallAndWait(cmd.Context(), daemon.MethodFetch, func(p daemon.Props) {
				if prog != nil && p.DownloadSize > 0 {
					prog(int64(p.DownloadedBytes), int64(p.DownloadSize))
				}
			})
			clear()
			if err != nil {
				return err
			}
			return describeProps(p)
		},
	}
	cmd.Flags().StringVar(&bus, "bus", "system", "the daemon's bus: system, session or an address")
	return cmd
}

// viaDaemon runs a method on the daemon for verbs that also have a
// sysroot-level form.
func viaDaemon(cmd *cobra.Command, bus string, m daemon.Method) error {
	c, err := dialDaemon(bus)
	if err != nil {
		return err
	}
	defer c.Close()
	p, err := c.CallAndWait(cmd.Context(), m, nil)
	if err != nil {
		return err
	}
	return describeProps(p)
}

func describeProps(p daemon.Props) error {
	fmt.Printf("state:    %s\nimage:    %s\ncurrent:  %d\nprevious: %d\n", p.State, p.Image, p.CurrentVersion, p.PreviousVersion)
	if p.AvailableVersion != 0 {
		fmt.Printf("available: %d\n", p.AvailableVersion)
	}
	if p.DownloadSize != 0 {
		fmt.Printf("download: %s of %s\n", human(int64(p.DownloadedBytes)), human(int64(p.DownloadSize)))
	}
	fmt.Printf("peers:    %d\n", p.PeerCount)
	if p.State == daemon.StateError {
		return errors.New(p.ErrorMessage)
	}
	return nil
}
