package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/daemon"
	"github.com/peerup/peerup/discovery"
)

const defaultConfig = "/etc/peerup/peerup.toml"

func (a *app) newDaemonCmd() *cobra.Command {
	var cfgPath string
	var flags *daemon.ConfigFlags
	cmd := &cobra.Command{
		Use:   "daemon (--sysroot DIR | --repo REPO) --trust PUBFILE... [--listen ADDR] [--bus system|session|none|ADDRESS] [--policy auto|download|notify] [--peer URL]... [--volume DIR]... [--config FILE]",
		Short: "Run the background updater",
		Long: `Serves this node's repo to its neighbours, looks for newer signed versions
(on the peers given with --peer, and as discovery reports them), fetches them
in the background and acts by policy:

  auto      fetch, stage and switch at once (previous is kept)
  download  fetch and stage, then signal UpdateReady and wait for Apply
  notify    only signal that an update is available

Under auto it respects the laptop: it switches only within --apply-window
(local times, such as "Mon-Fri 16:00-08:00"), not on battery below
--battery-floor-percent (UPower), or, with --apply-on shutdown, only as the
laptop shuts down (peerup-apply-on-shutdown.service); it fetches and stages
meanwhile. On a metered connection (NetworkManager) it fetches from the LAN
alone. 'peerup status' says what it waits for.

A --volume folder is watched for a USB stick written by 'peerup export': when
one is mounted there, the daemon updates from it like from a peer, checking
every byte just as strictly.

The desktop and 'peerup status/check/fetch/apply' talk to it over D-Bus
(org.peerup.Updater1). Settings come from --config (default ` + defaultConfig + `,
if present); flags override it. One daemon runs per sysroot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath, flags)
			if err != nil {
				return err
			}
			cfg.LANAddrs = func() ([]net.IP, error) { return discovery.LinkAddrs(cfg.Iface) }
			// Process-wide, so set here rather than in the daemon package,
			// whose tests run several daemons in one process.
			debug.SetMemoryLimit(apply.MemoryMiB(cfg.MemoryMiB).SoftLimit())
			newDisc := func(image string, version uint64, port int) (daemon.Discovery, error) {
				if cfg.NoMDNS && cfg.NoMulticast {
					return nil, nil
				}
				return startDiscovery(cmd.Context(), cfg, image, version, port, a)
			}
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
			a.log.Info("daemon running", "sysroot", cfg.Sysroot, "listen", cfg.WithDefaults().Listen, "port", d.Addr.(*net.TCPAddr).Port)
			d.Wait(cmd.Context())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "TOML config file (default "+defaultConfig+" if it exists)")
	flags = daemon.AddConfigFlags(f)
	return cmd
}

// loadConfig reads the config file at path (or the default one, if it
// exists) with the flags given on top.
func loadConfig(path string, flags *daemon.ConfigFlags) (daemon.Config, error) {
	cfg := daemon.Config{}
	if path == "" {
		if _, err := os.Stat(defaultConfig); err == nil {
			path = defaultConfig
		}
	}
	if path != "" {
		var err error
		if cfg, err = daemon.LoadConfig(path); err != nil {
			return cfg, err
		}
	}
	flags.Apply(&cfg)
	return cfg, nil
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
			prog, clear := progress("fetching", "staging the new tree")
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
		if p.RolloutPercent < 100 {
			fmt.Printf("rollout:  %s\n", rolloutLine(p))
		}
	}
	if p.DownloadSize != 0 {
		fmt.Printf("download: %s of %s\n", human(int64(p.DownloadedBytes)), human(int64(p.DownloadSize)))
	}
	fmt.Printf("peers:    %d\n", p.PeerCount)
	if p.SwitchPending {
		fmt.Printf("switch:   pending: %s\n", pendingLine(&apply.PendingSwitch{Current: p.CurrentVersion, Previous: p.PreviousVersion,
			Rollback: apply.IsRollback(p.CurrentVersion, p.PreviousVersion)}))
	}
	if p.HeldVersion != 0 {
		fmt.Printf("held:     versions up to %d (peerup unhold)\n", p.HeldVersion)
	}
	if p.BadVersion != 0 {
		fmt.Printf("bad:      version %d failed to boot (peerup unmark-bad)\n", p.BadVersion)
	}
	if p.Waiting != "" {
		fmt.Printf("waiting:  %s\n", p.Waiting)
	}
	if p.State == daemon.StateError {
		return errors.New(p.ErrorMessage)
	}
	return nil
}
