package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/peerup/peerup/daemon"
)

func (a *app) newFleetCmd() *cobra.Command {
	var from string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fleet --from URL [--json]",
		Short: "Show the laptops a school server hears from: versions, states, bytes shared",
		Long: `Reads the fleet table of a school server running 'peerup daemon --repo'
(URL is the server, as laptops give it with --peer; SPEC.md §18) and prints it
as a table, or as the server's JSON with --json. The same is on the server's
page /fleet. Reports are what laptops say of themselves, unsigned: hints for
people, never inputs to an update.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := daemon.FetchFleet(cmd.Context(), from)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(v)
			}
			return writeFleetTable(os.Stdout, v)
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the school server's URL (http://server:7380/)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the server's JSON")
	cmd.MarkFlagRequired("from")
	return cmd
}

// writeFleetTable prints v for a terminal.
func writeFleetTable(w io.Writer, v daemon.FleetView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tVERSION\tSTATE\tFROM SERVER\tFROM NEIGHBOURS\tFREE\tLAST SEEN\tNOTE")
	for _, m := range v.Machines {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(m.Name), m.Addr, m.Current, m.State,
			human(int64(m.ServerBytes)), human(int64(m.NeighbourBytes)), human(int64(m.FreeBytes)),
			v.Generated.Sub(m.LastSeen).Round(time.Second), note(m))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var vers []string
	for _, c := range v.Versions {
		vers = append(vers, fmt.Sprintf("v%d: %d", c.Version, c.Machines))
	}
	total := v.ServerBytes + v.NeighbourBytes
	saved := 0.0
	if total > 0 {
		saved = 100 * float64(v.NeighbourBytes) / float64(total)
	}
	_, err := fmt.Fprintf(w, "\n%d machines; versions %s; %s from the server, %s from neighbours (%.0f%% saved by sharing); %d fell back, %d failed\n",
		len(v.Machines), strings.Join(vers, ", "), human(int64(v.ServerBytes)), human(int64(v.NeighbourBytes)), saved, v.FellBack, v.Failed)
	return err
}

// note says what a person should look at.
func note(m daemon.FleetMachine) string {
	var s string
	if m.FellBack {
		s = fmt.Sprintf("fell back from v%d", m.Bad)
	}
	if m.Trying != 0 {
		s = join(s, fmt.Sprintf("v%d on probation, %d boots left", m.Trying, m.TriesLeft))
	}
	if m.Held != 0 {
		s = join(s, fmt.Sprintf("held up to v%d", m.Held))
	}
	if m.Error != "" {
		s = join(s, m.Error)
	}
	return s
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
