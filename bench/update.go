package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/memcg"
)

// updateServers are the server repos the publish benches left: the laptop
// update is measured from the very repos whose publish was timed.
type updateServers struct {
	peerupRepo, peerupTrust string
	ostreeRepo              string // archive mode, refs old and new, the static delta old→new
	profile                 string // if set, a folder for CPU profiles of peerup's timed updates
}

// laptopMemory is what the measured commands may hold, page cache
// included: a school laptop's whole memory, the same for both tools.
const laptopMemory = 256 << 20

type updateFigures struct {
	ours, ostree       time.Duration
	oursRSS, ostreeRSS int64 // the most over the repetitions; for ostree, of pull or checkout
	// What the server sent ostree's last measured pull: under deltas/, and
	// the rest. The rest is not small: ostree 2022.7 queues loose fetches of
	// the new commit's content objects before it has executed the delta
	// parts that would write them (ostree pull -v shows the order), so it
	// downloads most changed files whole beside the delta, a varying number
	// from run to run. The bytes table's ostree row is the delta alone,
	// OSTree's best case.
	ostreeDelta, ostreeOther served
	ostreePullLine           string // ostree's own account of the pull
}

// benchUpdate times a laptop at v1 updating to v2 over loopback HTTP:
// `peerup update` against `ostree pull` (which takes the static delta old→new)
// followed by `ostree checkout -H` of b, the tree peerup's update builds.
// Both pull into a store that already holds v1 and has it checked out, and
// both sync what they write by default (peerup one syncfs, ostree fsyncs).
// Each tool's server runs in a process of its own (startChild), as a school
// server is a machine of its own.
// Caches are warm for both: the server repos were just written by the
// publish benches and each laptop's starting state was just copied by
// cp -a and flushed; nothing is dropped.
func benchUpdate(ctx context.Context, w io.Writer, dir string, srv updateServers, n int) error {
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		fmt.Fprintln(w, "update: skipped: needs GNU time (Debian package time) for a peak RSS")
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	m := &meter{dir: dir}
	if why := memcg.Available(); why == "" {
		m.limit = laptopMemory
	}
	var fig updateFigures
	if err := oursUpdate(ctx, dir, srv, m, n, &fig); err != nil {
		return fmt.Errorf("peerup update: %w", err)
	}
	if err := ostreeUpdate(ctx, dir, srv.ostreeRepo, m, n, &fig); err != nil {
		return fmt.Errorf("ostree pull: %w", err)
	}
	limit := "no memory cgroup"
	if m.limit > 0 {
		limit = "each in a fresh " + mib(laptopMemory) + " memory cgroup"
	}
	fmt.Fprintf(w, "laptop update v1 -> v2 over loopback HTTP (%s, peak RSS from GNU time)\n", limit)
	fmt.Fprintf(w, "ostree pull was served %s: %s in %d static-delta requests, %s in %d other requests, loose objects the delta also holds (ostree: %s)\n",
		mb(fig.ostreeDelta.bytes.Load()+fig.ostreeOther.bytes.Load()), mb(fig.ostreeDelta.bytes.Load()), fig.ostreeDelta.reqs.Load(),
		mb(fig.ostreeOther.bytes.Load()), fig.ostreeOther.reqs.Load(), fig.ostreePullLine)
	ratio := fig.ours.Seconds() / fig.ostree.Seconds()
	fmt.Fprintf(w, "update time: peerup update %.2fs vs ostree pull (static delta) + checkout %.2fs = %.2f (target <= 1.0): %s\n",
		fig.ours.Seconds(), fig.ostree.Seconds(), ratio, verdict(ratio <= 1.0))
	fmt.Fprintf(w, "update peak RSS: peerup %s vs ostree %s (target: peerup <= %d MiB): %s\n",
		mib(fig.oursRSS), mib(fig.ostreeRSS), apply.DefaultMemoryMiB, verdict(fig.oursRSS <= apply.DefaultMemoryMiB<<20))
	return nil
}

// meter runs a command under GNU time, in the memory group when there is
// one, for the command's own peak RSS: getrusage from the bench would report
// the bench's high-water mark, which a child inherits across exec.
//
// Each run has a memory group of its own, made for it: a group kept from
// run to run would still be charged with the page cache of the runs before
// (and of the setup), so that later runs reclaim it as they go, and the
// first tool timed would pay for what the bench did before.
type meter struct {
	dir   string
	limit int64 // of each run's memory group; 0: no groups
	runs  int
	env   []string // added to the command's environment
}

func (m *meter) run(ctx context.Context, name string, args ...string) (out []byte, rss int64, err error) {
	m.runs++
	file := filepath.Join(m.dir, fmt.Sprintf("rss-%d", m.runs))
	var cmd *exec.Cmd
	if m.limit > 0 {
		g, err := memcg.New(fmt.Sprintf("bench-update-%d", m.runs), m.limit)
		if err != nil {
			return nil, 0, err
		}
		defer g.Remove()
		cmd = g.Command(ctx, file, name, args...)
	} else {
		cmd = exec.CommandContext(ctx, "/usr/bin/time", append([]string{"-q", "-f", "%M", "-o", file, name}, args...)...)
	}
	if len(m.env) > 0 {
		cmd.Env = append(os.Environ(), m.env...)
	}
	if out, err = cmd.CombinedOutput(); err != nil {
		return out, 0, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	rss, err = memcg.PeakRSS(file)
	return out, rss, err
}

// settle flushes every filesystem and waits, up to 10 s, until the
// kernel holds almost nothing dirty or under writeback. The work folder is
// a loop image whose backing file has a page cache of its own on the
// host's disk: one sync leaves that cache writing back behind it, and the
// first tool timed after the bench's own heavy writes (the publish, the
// repos, the copies) would pay for them.
func settle() {
	for range 100 {
		syscall.Sync()
		if dirtyKiB() < 4<<10 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dirtyKiB is the kernel's Dirty plus Writeback, in KiB (0 if unknown).
func dirtyKiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var n int64
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"Dirty:", "Writeback:"} {
			if v, ok := strings.CutPrefix(l, k); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					n += kb
				}
			}
		}
	}
	return n
}

// repeated is medianWithReset over a laptop whose starting state is a fresh
// cp -a of start at run, made outside the timing before each repetition.
func repeated(ctx context.Context, n int, start, run string, f func() error) (time.Duration, error) {
	restore := func() error {
		if err := os.RemoveAll(run); err != nil {
			return err
		}
		if out, err := exec.CommandContext(ctx, "cp", "-a", start, run).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -a %s: %w\n%s", start, err, out)
		}
		// Flushed outside the timing: peerup's one syncfs would otherwise
		// write out the whole copy (ostree's per-file fsyncs would not), and
		// a laptop about to update has no such backlog.
		settle()
		return nil
	}
	if err := restore(); err != nil {
		return 0, err
	}
	defer os.RemoveAll(run)
	return medianWithReset(n, f, restore)
}

func oursUpdate(ctx context.Context, dir string, srv updateServers, m *meter, n int, fig *updateFigures) error {
	bin := filepath.Join(dir, "peerup")
	if err := buildPeerup(ctx, bin); err != nil {
		return err
	}
	server, err := startChild(ctx, updateServeEnv+"=peerup="+srv.peerupRepo)
	if err != nil {
		return err
	}
	defer server.stop()
	url := "http://" + server.addr
	update := func(sysroot string, version int) ([]byte, int64, error) {
		return m.run(ctx, bin, "update", "--sysroot", sysroot, "--trust", srv.peerupTrust, "--from", url, "--version", fmt.Sprint(version))
	}
	start := filepath.Join(dir, "peerup-v1")
	if _, _, err := update(start, 1); err != nil {
		return err
	}
	run := filepath.Join(dir, "peerup-run")
	runs := 0
	fig.ours, err = repeated(ctx, n, start, run, func() error {
		if srv.profile != "" {
			runs++
			m.env = []string{"PEERUP_CPUPROFILE=" + filepath.Join(srv.profile, fmt.Sprintf("update-%d.pprof", runs))}
			defer func() { m.env = nil }()
		}
		out, rss, err := update(run, 2)
		if err != nil {
			return err
		}
		if !strings.Contains(string(out), "current is now version 2") {
			return fmt.Errorf("no switch to version 2 in its output:\n%s", out)
		}
		fig.oursRSS = max(fig.oursRSS, rss)
		return nil
	})
	return err
}

func ostreeUpdate(ctx context.Context, dir, serverRepo string, m *meter, n int, fig *updateFigures) error {
	ostree := func(repo string, args ...string) error {
		out, err := exec.CommandContext(ctx, "ostree", append([]string{"--repo=" + repo}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ostree %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	// The summary lists the static deltas; without it a pull fetches
	// objects one by one.
	if err := ostree(serverRepo, "summary", "-u"); err != nil {
		return err
	}
	server, err := startChild(ctx, updateServeEnv+"=ostree="+serverRepo)
	if err != nil {
		return err
	}
	defer server.stop()
	url := "http://" + server.addr
	// The laptop: a bare repo, as a laptop's store is, holding a and with
	// it checked out as the running tree.
	start := filepath.Join(dir, "ostree-v1")
	repo := filepath.Join(start, "repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"init", "--mode=bare"},
		{"remote", "add", "--no-gpg-verify", "origin", url},
		{"pull", "origin", "old"},
		{"checkout", "-H", "origin:old", filepath.Join(start, "a")},
	} {
		if err := ostree(repo, args...); err != nil {
			return err
		}
	}
	run := filepath.Join(dir, "ostree-run")
	runRepo := "--repo=" + filepath.Join(run, "repo")
	fig.ostree, err = repeated(ctx, n, start, run, func() error {
		if err := readCounts(ctx, url, &fig.ostreeDelta, &fig.ostreeOther); err != nil { // and reset them
			return err
		}
		out, pullRSS, err := m.run(ctx, "ostree", runRepo, "pull", "origin", "new")
		if err != nil {
			return err
		}
		if err := readCounts(ctx, url, &fig.ostreeDelta, &fig.ostreeOther); err != nil {
			return err
		}
		// Pulling b object by object would be a slower baseline than
		// OSTree's own best, so a pull without the delta stops the bench.
		if fig.ostreeDelta.reqs.Load() == 0 || !strings.Contains(string(out), "delta part") {
			return fmt.Errorf("ostree pull did not use the static delta old→new (%d requests under deltas/):\n%s", fig.ostreeDelta.reqs.Load(), out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		fig.ostreePullLine = strings.TrimSpace(lines[len(lines)-1])
		_, coRSS, err := m.run(ctx, "ostree", runRepo, "checkout", "-H", "origin:new", filepath.Join(run, "b"))
		if err != nil {
			return err
		}
		fig.ostreeRSS = max(fig.ostreeRSS, pullRSS, coRSS)
		return nil
	})
	return err
}

// served counts a server's requests and the body bytes it sent.
type served struct{ reqs, bytes atomic.Int64 }

// countingWriter counts the body bytes a handler writes.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}
