package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/daemon"
)

func (a *app) newApplyStagedCmd() *cobra.Command {
	var cfgPath string
	var flags *daemon.ConfigFlags
	cmd := &cobra.Command{
		Use:   "apply-staged [--config FILE] [--sysroot DIR]",
		Short: "Switch to the staged version as the laptop shuts down (apply-on = \"shutdown\")",
		Long: `Run by peerup-apply-on-shutdown.service as the laptop goes down, after the
daemon has stopped. With policy auto and apply-on "shutdown" in the daemon's
config, it switches to the version the daemon fetched and staged, so the
next boot starts it and nobody sees the change in the middle of a lesson.
Otherwise, or with nothing staged, or with the staged version held or marked
bad, it does nothing and says so. The switch is the usual atomic one; the
old tree is removed when the daemon next starts, so shutdown stays quick.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath, flags)
			if err != nil {
				return err
			}
			msg, err := daemon.ApplyStaged(cfg)
			if err != nil {
				return err
			}
			fmt.Println(msg)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "the daemon's TOML config file (default "+defaultConfig+" if it exists)")
	flags = daemon.AddConfigFlags(f, "sysroot", "policy", "apply-on", "boot-tries")
	return cmd
}
