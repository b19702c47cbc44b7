package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/internal/testlan"
	"github.com/peerup/peerup/transfer"
)

// The fleet scenario: a school server and a class of laptops, each in its
// own network namespace on an 8 Mbit/s link (a school's Wi-Fi), updating
// from v1 to v2 by themselves; run once peer-to-peer and once as plain
// client-server (--no-p2p), the baseline.
const (
	fleetRate      = "8mbit"
	fleetBaseFiles = 120      // files of v1
	fleetBaseSize  = 24 << 10 // bytes each
	fleetNewFiles  = 48       // files v2 adds or replaces
	fleetNewSize   = 96 << 10 // bytes each
)

type fleetFigures struct {
	converge   time.Duration
	seedSent   int64
	fetched    int64 // mean bytes delivered to a laptop
	laptopHWM  string
	laptopRSSk int64
}

func benchLAN(ctx context.Context, w io.Writer, work string, laptops int) (err error) {
	fmt.Fprintf(w, "\n== fleet: a school server and %d laptops, each on a %s link, updating v1 -> v2 ==\n", laptops, fleetRate)
	if why := testlan.Available(); why != "" {
		fmt.Fprintf(w, "skipped: %s\n", why)
		return nil
	}
	bin := filepath.Join(work, "fleet-peerup") // not "peerup": the deltas bench owns that folder
	if err := buildPeerup(ctx, bin); err != nil {
		return err
	}
	update := int64(fleetNewFiles * fleetNewSize)
	var figs [2]fleetFigures
	for i, p2p := range []bool{true, false} {
		f, err := fleetRun(ctx, bin, filepath.Join(work, fmt.Sprintf("fleet-%d", i)), laptops, p2p)
		if err != nil {
			return err
		}
		figs[i] = f
	}
	fmt.Fprintf(w, "update: %d new files, %s\n", fleetNewFiles, mb(update))
	fmt.Fprintf(w, "%-16s %10s %12s %10s %16s\n", "mode", "converge", "seed upload", "÷ update", "fetched/laptop")
	for i, name := range []string{"peer-to-peer", "client-server"} {
		f := figs[i]
		fmt.Fprintf(w, "%-16s %9.1fs %12s %10.2f %16s\n", name, f.converge.Seconds(), mb(f.seedSent), float64(f.seedSent)/float64(update), mb(f.fetched))
	}
	up := float64(figs[0].seedSent) / float64(update)
	conv := figs[0].converge.Seconds() / figs[1].converge.Seconds()
	// The seed's upload is its interface's byte counter: every byte it sent,
	// metadata, HTTP and TCP/IP headers, mDNS and announcements included.
	fmt.Fprintf(w, "seed upload, every byte on its link / update size (P2P): %.2f (target <= 1.2): %s\n", up, verdict(up <= 1.2))
	fmt.Fprintf(w, "convergence P2P / client-server: %.2f (target <= 0.3): %s\n", conv, verdict(conv <= 0.3))
	fmt.Fprintf(w, "peak RSS of one laptop daemon during the update (VmHWM): %s (target <= 64 MiB): %s\n",
		figs[0].laptopHWM, verdict(figs[0].laptopRSSk <= 64<<10))
	return nil
}

func fleetRun(ctx context.Context, bin, dir string, laptops int, p2p bool) (fig fleetFigures, err error) {
	r := &testlan.Runner{}
	err = r.Run(func() error {
		var err error
		fig, err = fleetScenario(ctx, r, bin, dir, laptops, p2p)
		return err
	})
	return fig, err
}

func fleetScenario(ctx context.Context, r *testlan.Runner, bin, dir string, laptops int, p2p bool) (fig fleetFigures, err error) {
	f, err := newBenchFleet(dir)
	if err != nil {
		return fig, err
	}
	tree := filepath.Join(dir, "tree")
	writeRandom := func(name string, size int) error {
		b := make([]byte, size)
		rand.Read(b)
		p := filepath.Join(tree, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		return os.WriteFile(p, b, 0o644)
	}
	for i := range fleetBaseFiles {
		if err := writeRandom(fmt.Sprintf("usr/lib/school/f%03d", i), fleetBaseSize); err != nil {
			return fig, err
		}
	}
	if _, err := f.repo.Publish(ctx, tree, blobstore.PublishOptions{Image: "fleet", Version: 1, Signer: f.signer}); err != nil {
		return fig, err
	}
	// Every laptop starts at v1, installed from the repo over loopback.
	srv := httptest.NewServer(transfer.NewHandler(f.repo.Dir(), nil))
	defer srv.Close()
	src, err := transfer.NewClient(srv.URL, nil)
	if err != nil {
		return fig, err
	}
	sysroots := make([]string, laptops)
	for i := range sysroots {
		sysroots[i] = filepath.Join(dir, fmt.Sprintf("laptop-%02d", i+1))
		s, err := apply.Open(sysroots[i])
		if err != nil {
			return fig, err
		}
		if _, err := s.Pull(ctx, src, apply.PullOptions{Version: 1, Trust: f.trust}); err != nil {
			return fig, err
		}
		if _, _, err := s.Apply(1); err != nil {
			return fig, err
		}
	}

	lan := testlan.NewShaped(r, laptops+1, fleetRate)
	pub := filepath.Join(dir, "bench.pub")
	var procs []*exec.Cmd
	r.Cleanup(func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	})
	start := func(node int, args ...string) (*exec.Cmd, error) {
		cmd := lan.Command(node, bin, args...)
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("node-%02d.log", node)))
		if err != nil {
			return nil, err
		}
		defer logf.Close()
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, cmd)
		return cmd, nil
	}
	mode := []string{}
	if !p2p {
		mode = []string{"--no-p2p"}
	}
	if _, err := start(1, append([]string{"daemon", "--repo", f.repo.Dir(), "--trust", pub, "--iface", "e1"}, mode...)...); err != nil {
		return fig, err
	}
	seedURL := "http://" + lan.Nodes[0].IP + ":7380/"
	var first *exec.Cmd
	for i := range laptops {
		node := i + 2
		cmd, err := start(node, append([]string{"daemon", "--sysroot", sysroots[i], "--trust", pub, "--bus", "none",
			"--iface", lan.Nodes[node-1].Iface, "--policy", "auto", "--peer", seedURL}, mode...)...)
		if err != nil {
			return fig, err
		}
		if first == nil {
			first = cmd
		}
	}
	for _, p := range procs {
		if err := testlan.WaitListening(ctx, p.Process.Pid, 7380); err != nil {
			return fig, err
		}
	}

	for i := range fleetNewFiles {
		// Half replace v1 files, half are new.
		name := fmt.Sprintf("usr/lib/school/f%03d", i)
		if i%2 == 1 {
			name = fmt.Sprintf("usr/share/school/new%03d", i)
		}
		if err := writeRandom(name, fleetNewSize); err != nil {
			return fig, err
		}
	}
	sent0 := lan.Sent(1)
	recv0 := make([]int64, laptops)
	for i := range recv0 {
		recv0[i] = lan.Received(i + 2)
	}
	t0 := time.Now()
	// As `peerup publish` does it: encodings against v1 and the manifest
	// delta are made before v2 is listed.
	if _, err := diff.Publish(ctx, f.repo, tree, diff.PublishOptions{
		PublishOptions: blobstore.PublishOptions{Image: "fleet", Version: 2, Signer: f.signer},
		Deltas:         &diff.GenerateOptions{},
	}); err != nil {
		return fig, err
	}
	// The laptops update by themselves; a benchmark may poll their
	// sysroots (the tests wait on D-Bus signals instead).
	deadline := time.Now().Add(15 * time.Minute)
	for pending := laptops; pending > 0; {
		pending = 0
		for _, s := range sysroots {
			if t, _ := os.Readlink(filepath.Join(s, "current")); !strings.HasSuffix(t, "/2") {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fig, fmt.Errorf("%d of %d laptops not at v2 after 15 minutes (logs in %s)", pending, laptops, dir)
		}
		select {
		case <-ctx.Done():
			return fig, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	fig.converge = time.Since(t0)
	fig.seedSent = lan.Sent(1) - sent0
	for i := range recv0 {
		fig.fetched += lan.Received(i+2) - recv0[i]
	}
	fig.fetched /= int64(laptops)
	fig.laptopHWM = procStatus(first.Process.Pid, "VmHWM")
	fig.laptopRSSk, _ = strconv.ParseInt(strings.TrimSuffix(fig.laptopHWM, " kB"), 10, 64)
	return fig, nil
}
