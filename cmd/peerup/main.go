// Command peerup publishes, serves, fetches and applies OS image versions.
// It only parses flags and wires the packages together; see SPEC.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	endProfile := cpuProfile(os.Getenv("PEERUP_CPUPROFILE"))
	err := newRoot().ExecuteContext(ctx)
	endProfile()
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "peerup: %v\n", err)
		if errors.Is(err, context.Canceled) {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

// cpuProfile writes a CPU profile of the whole command to path, if set:
// for `go run ./bench -profile`, which profiles the laptop update where it
// is timed. A profile that cannot start is reported and skipped.
func cpuProfile(path string) (end func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peerup: cpu profile: %v\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// app carries what every verb shares.
type app struct {
	verbose bool
	logJSON bool
	log     *slog.Logger
}

func newRoot() *cobra.Command {
	a := &app{log: slog.New(slog.DiscardHandler)}
	root := &cobra.Command{
		Use:   "peerup",
		Short: "Peer-to-peer OS updates for laptop fleets",
		Long: `peerup publishes signed OS image versions, serves them over HTTP, and
updates a sysroot to a new version by building a hard-linked tree beside the
running one and switching to it atomically. The previous tree is kept for
rollback.`,
		Version:       version(),
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a verb: the help, and a failure, so that a script that
		// lost its verb does not carry on as if it had worked.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.Help()
			return errors.New("no verb given (see the list above)")
		},
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			// A daemon reports what it does (found, fetched, applied) by
			// default, for the journal; a command only its warnings.
			level := slog.LevelWarn
			if cmd.Name() == "daemon" {
				level = slog.LevelInfo
			}
			if a.verbose {
				level = slog.LevelDebug
			}
			opts := &slog.HandlerOptions{Level: level}
			if a.logJSON {
				a.log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
			} else {
				a.log = slog.New(slog.NewTextHandler(os.Stderr, opts))
			}
		},
	}
	root.PersistentFlags().BoolVarP(&a.verbose, "verbose", "v", false, "log what peerup does")
	root.PersistentFlags().BoolVar(&a.logJSON, "log-json", false, "log as JSON lines (for log collectors)")
	root.AddCommand(
		a.newKeygenCmd(),
		a.newPublishCmd(),
		a.newWithdrawCmd(),
		a.newRolloutCmd(),
		a.newServeCmd(),
		a.newPullCmd(),
		a.newApplyCmd(),
		a.newApplyStagedCmd(),
		a.newUpdateCmd(),
		a.newStatusCmd(),
		a.newRollbackCmd(),
		a.newDaemonCmd(),
		a.newFleetCmd(),
		a.newCheckCmd(),
		a.newFetchCmd(),
		a.newDiffCmd(),
		a.newPatchCmd(),
		a.newBootCmd(),
		a.newMarkGoodCmd(),
		a.newDiscoverCmd(),
		a.newMirrorCmd(),
		a.newGCCmd(),
		a.newVerifyCmd(),
		a.newExportCmd(),
		a.newManCmd(),
	)
	root.AddCommand(a.newHoldCmds()...)
	return root
}
