// Command bench measures peerup against the tools it stands in for, in the
// same run on the same data: building and switching a tree against cp -al,
// publish hashing against sha256sum, and bytes on the wire for a real Debian
// security update against OSTree static deltas, zstd and rsync, and the
// laptop's update of it against ostree pull + checkout; and a
// load scenario: one seed serving 50 concurrent pullers. The machine
// is shared and noisy, so each timing is repeated and the median quoted.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/peerup/peerup/internal/debdata"
)

func main() {
	if dir := os.Getenv(serveEnv); dir != "" {
		if err := serveChild(dir); err != nil {
			fmt.Fprintf(os.Stderr, "bench seed: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if spec := os.Getenv(updateServeEnv); spec != "" {
		if err := serveUpdateChild(spec); err != nil {
			fmt.Fprintf(os.Stderr, "bench server: %v\n", err)
			os.Exit(1)
		}
		return
	}
	n := flag.Int("n", 5, "repetitions of each timing (the median is quoted)")
	tree := flag.String("tree", "/usr/local/go", "a large real tree for the apply and hashing figures")
	only := flag.String("only", "apply,hash,deltas,load,fleet", "which comparisons to run")
	laptops := flag.Int("laptops", 20, "laptops in the fleet scenario")
	cache := flag.String("cache", debdata.DefaultCache, "where downloaded .deb files are kept between runs")
	profile := flag.String("profile", "", "write a CPU profile of each timed peerup update into this folder (deltas)")
	keep := flag.Bool("keep", false, "leave the work folder, with its repos and laptops, for a look by hand")
	disk := flag.String("disk", "loop", `where the work folder lives: "loop", a fresh ext4 image mounted for the run (as a laptop's root: ext4 with a journal, not aged by earlier runs; needs root), or "temp", the temp folder as it is`)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *n, *tree, *only, *cache, *profile, *laptops, *keep, *disk); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, n int, tree, only, cache, profile string, laptops int, keep bool, disk string) error {
	work, where, done, err := workFolder(ctx, disk)
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Printf("work folder kept: %s\n", work)
	} else {
		defer done()
	}
	fmt.Printf("machine: %d cores, %s; work folder on %s; %d repetitions, medians quoted\n",
		runtime.NumCPU(), cpuModel(), where, n)
	want := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		want[strings.TrimSpace(s)] = true
	}
	if want["apply"] {
		if err := benchApply(ctx, os.Stdout, tree, work, n); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
	}
	if want["hash"] {
		if err := benchHash(ctx, os.Stdout, tree, work, n); err != nil {
			return fmt.Errorf("hash: %w", err)
		}
	}
	if want["load"] {
		if err := benchLoad(ctx, os.Stdout, work); err != nil {
			return fmt.Errorf("load: %w", err)
		}
	}
	if want["fleet"] {
		if err := benchLAN(ctx, os.Stdout, work, laptops); err != nil {
			return fmt.Errorf("fleet: %w", err)
		}
	}
	if want["deltas"] {
		if err := benchDeltas(ctx, os.Stdout, cache, work, profile, n); err != nil {
			return fmt.Errorf("deltas: %w", err)
		}
	}
	return nil
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// median times f n times and returns the median duration.
func median(n int, f func() error) (time.Duration, error) {
	return medianWithReset(n, f, func() error { return nil })
}

// medianWithReset is median with untimed work after each run.
func medianWithReset(n int, f, reset func() error) (time.Duration, error) {
	var ds []time.Duration
	for range n {
		start := time.Now()
		if err := f(); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(start))
		if err := reset(); err != nil {
			return 0, err
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], nil
}

// buildPeerup builds the peerup command into bin, so that a bench run by
// itself (go run ./bench) measures this tree's code, not an older bin/peerup.
func buildPeerup(ctx context.Context, bin string) error {
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/peerup").CombinedOutput(); err != nil {
		return fmt.Errorf("build peerup: %w\n%s", err, out)
	}
	return nil
}
