// Command peerup-boot is the boot step that the initramfs runs once it has
// mounted the root partition (SPEC.md §12): it chooses the tree to boot and
// mounts it as the root. It is a small static binary of its own so that the
// initramfs of a 256 MB laptop carries only this, not the whole peerup.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/peerup/peerup/apply"
)

func main() {
	root := flag.String("root", "/root", "where the initramfs mounted the root partition (initramfs-tools' ${rootmnt})")
	part := flag.String("part", "/run/peerup/part", "where the partition is kept while the root is assembled")
	cmdlinePath := flag.String("cmdline", "/proc/cmdline", "file holding the kernel command line")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("prog", "peerup-boot")
	cmdline, err := os.ReadFile(*cmdlinePath)
	if err != nil {
		log.Warn("no kernel command line", "err", err)
	}
	c, err := apply.BootPartition(log, *root, *part, string(cmdline))
	if errors.Is(err, apply.ErrNoSysroot) {
		fmt.Fprintln(os.Stderr, "peerup-boot: no peerup sysroot on the root partition; booting it as it is")
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peerup-boot: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "peerup-boot: booting version %d: %s\n", c.Version, c.Reason)
}
