package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/internal/debdata"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

type deltaFigures struct {
	changedFiles int
	changedBytes int64
	ours         int64 // every body byte the server sent the laptop's pull
	oursPatch    int64
	oursMeta     int64         // of ours: index, manifest delta, delta index, signatures
	publish      time.Duration // publish of the new tree: hash and store
	generate     time.Duration // making the encodings and the delta index
	ostree       int64
	ostreeCommit time.Duration
	ostreeTime   time.Duration
	zstd19       int64
	rsync        int64
}

func benchDeltas(ctx context.Context, w io.Writer, cache, work, profile string, n int) error {
	fmt.Fprintln(w, "\n== bytes on the wire for a real security update ==")
	oldTree, newTree, err := debdata.Trees(ctx, debdata.SecurityUpdate(), cache, work, "")
	if err != nil {
		return err
	}
	var fig deltaFigures
	changed, err := changedFiles(oldTree, newTree)
	if err != nil {
		return err
	}
	for _, c := range changed {
		fig.changedFiles++
		fig.changedBytes += c.size
	}
	fmt.Fprintf(w, "update: %d packages, %d changed files, %s of changed bytes\n", len(debdata.SecurityUpdate()), fig.changedFiles, mb(fig.changedBytes))
	ours, ostree := filepath.Join(work, "peerup"), filepath.Join(work, "ostree")
	if err := oursDeltas(ctx, ours, oldTree, newTree, &fig); err != nil {
		return fmt.Errorf("peerup: %w", err)
	}
	if err := ostreeDeltas(ctx, ostree, oldTree, newTree, &fig); err != nil {
		return fmt.Errorf("ostree: %w", err)
	}
	if fig.zstd19, err = zstdWhole(ctx, changed); err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	if fig.rsync, err = rsyncBytes(ctx, work, oldTree, newTree); err != nil {
		return fmt.Errorf("rsync: %w", err)
	}
	fmt.Fprintf(w, "%-34s %10s %8s\n", "method", "bytes", "÷ ours")
	row := func(name string, n int64) {
		fmt.Fprintf(w, "%-34s %10s %8.2f\n", name, mb(n), float64(n)/float64(fig.ours))
	}
	row("peerup update, all the server sent", fig.ours)
	row("ostree static-delta", fig.ostree)
	row("whole changed files, zstd -19", fig.zstd19)
	row("rsync --no-whole-file", fig.rsync)
	fmt.Fprintf(w, "peerup: patches %s and metadata %s (index, manifest delta, packed delta index, signatures) of the %s; the pull's own count agrees\n", mb(fig.oursPatch), mb(fig.oursMeta), mb(fig.ours))
	bytesRatio := float64(fig.ours) / float64(fig.ostree)
	genRatio := fig.generate.Seconds() / fig.ostreeTime.Seconds()
	allRatio := (fig.publish + fig.generate).Seconds() / (fig.ostreeCommit + fig.ostreeTime).Seconds()
	fmt.Fprintf(w, "bytes: peerup, metadata included / ostree static delta = %.2f (target <= 0.50): %s\n", bytesRatio, verdict(bytesRatio <= 0.50))
	fmt.Fprintf(w, "delta time: peerup encodings %.1fs vs ostree static-delta generate %.1fs = %.2f (target <= 1.0): %s\n",
		fig.generate.Seconds(), fig.ostreeTime.Seconds(), genRatio, verdict(genRatio <= 1.0))
	fmt.Fprintf(w, "publish time: peerup publish + encodings %.1fs vs ostree commit + static-delta %.1fs = %.2f (target <= 1.0): %s\n",
		(fig.publish + fig.generate).Seconds(), (fig.ostreeCommit + fig.ostreeTime).Seconds(), allRatio, verdict(allRatio <= 1.0))
	return benchUpdate(ctx, w, filepath.Join(work, "update"), updateServers{
		peerupRepo:  filepath.Join(ours, "repo"),
		peerupTrust: filepath.Join(ours, "bench.pub"),
		ostreeRepo:  ostree,
		profile:     profile,
	}, n)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func mb(n int64) string { return fmt.Sprintf("%.2f MB", float64(n)/1e6) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

type changedFile struct {
	path string
	size int64
}

// changedFiles lists the regular files of newTree whose bytes are not at
// the same path in oldTree, counting identical contents once.
func changedFiles(oldTree, newTree string) ([]changedFile, error) {
	seen := map[[32]byte]bool{}
	var out []changedFile
	err := filepath.WalkDir(newTree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(newTree, p)
		nb, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if ob, err := os.ReadFile(filepath.Join(oldTree, rel)); err == nil && bytes.Equal(ob, nb) {
			return nil
		}
		h := sha256.Sum256(nb)
		if !seen[h] {
			seen[h] = true
			out = append(out, changedFile{p, int64(len(nb))})
		}
		return nil
	})
	return out, err
}

func oursDeltas(ctx context.Context, dir, oldTree, newTree string, fig *deltaFigures) error {
	key, err := manifest.GenerateKey("bench")
	if err != nil {
		return err
	}
	signer := manifest.NewSigner(key)
	os.MkdirAll(dir, 0o755)
	if _, _, err := manifest.WriteKeyPair(key, dir, "bench"); err != nil {
		return err
	}
	kr, err := manifest.LoadKeyring(filepath.Join(dir, "bench.pub"))
	if err != nil {
		return err
	}
	repo, err := blobstore.OpenRepo(filepath.Join(dir, "repo"))
	if err != nil {
		return err
	}
	if _, err := repo.Publish(ctx, oldTree, blobstore.PublishOptions{Image: "bench", Version: 1, Signer: signer}); err != nil {
		return err
	}
	start := time.Now()
	if _, err := repo.Publish(ctx, newTree, blobstore.PublishOptions{Image: "bench", Version: 2, Signer: signer}); err != nil {
		return err
	}
	fig.publish = time.Since(start)
	start = time.Now()
	if _, err := diff.Generate(ctx, repo, "bench", 2, diff.GenerateOptions{Signer: signer}); err != nil {
		return err
	}
	fig.generate = time.Since(start)
	var sent served
	h := transfer.NewHandler(repo.Dir(), nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent.reqs.Add(1)
		h.ServeHTTP(countingWriter{w, &sent.bytes}, r)
	}))
	defer srv.Close()
	src, err := transfer.NewClient(srv.URL, nil)
	if err != nil {
		return err
	}
	sys, err := apply.Open(filepath.Join(dir, "laptop"))
	if err != nil {
		return err
	}
	if _, err := sys.Pull(ctx, src, apply.PullOptions{Version: 1, Trust: kr}); err != nil {
		return err
	}
	if _, _, err := sys.Apply(1); err != nil {
		return err
	}
	sent.bytes.Store(0)
	res, err := sys.Pull(ctx, src, apply.PullOptions{Version: 2, Trust: kr})
	if err != nil {
		return err
	}
	// The server's count is the figure; the pull's own must agree with it,
	// or the laptop's counters (and D-Bus DownloadedBytes) are wrong.
	fig.ours, fig.oursPatch, fig.oursMeta = sent.bytes.Load(), res.PatchBytes, res.MetadataBytes
	if res.FetchedBytes != fig.ours {
		return fmt.Errorf("the pull counted %d bytes received, the server sent %d", res.FetchedBytes, fig.ours)
	}
	if res.ManifestFrom != 1 {
		return fmt.Errorf("the pull fetched the whole manifest, not a manifest delta from v1")
	}
	return nil
}

// ostreeDeltas commits the trees as refs old and new of an archive-mode
// repo, the mode a server serves over HTTP, and generates the static delta
// old→new. (With refs named a and b, which ostree can also read as
// checksum prefixes, two runs out of three here made the delta from a
// commit to itself; with these names none did. The cause is not proven, so
// the size check below stays.)
func ostreeDeltas(ctx context.Context, repo, oldTree, newTree string, fig *deltaFigures) error {
	run := func(args ...string) error {
		out, err := exec.CommandContext(ctx, "ostree", append([]string{"--repo=" + repo}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ostree %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("init", "--mode=archive"); err != nil {
		return err
	}
	if err := run("commit", "--branch=old", "--tree=dir="+oldTree, "--no-xattrs"); err != nil {
		return err
	}
	start := time.Now()
	if err := run("commit", "--branch=new", "--tree=dir="+newTree, "--no-xattrs"); err != nil {
		return err
	}
	fig.ostreeCommit = time.Since(start)
	start = time.Now()
	gen := exec.CommandContext(ctx, "ostree", "--repo="+repo, "static-delta", "generate", "--from=old", "--to=new")
	out, err := gen.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ostree static-delta generate: %v\n%s", err, out)
	}
	fig.ostreeTime = time.Since(start)
	err = filepath.WalkDir(filepath.Join(repo, "deltas"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				fig.ostree += fi.Size()
			}
		}
		return err
	})
	// A run once left only a few hundred bytes and no parts; a figure like
	// that would flatter us, so it stops the benchmark instead.
	if err == nil && fig.ostree*1000 < fig.changedBytes {
		err = fmt.Errorf("static-delta generate wrote only %d bytes under %s/deltas for %d changed bytes:\n%s", fig.ostree, repo, fig.changedBytes, out)
	}
	return err
}

// zstdWhole compresses every changed file with the zstd CLI at level 19,
// on every core.
func zstdWhole(ctx context.Context, files []changedFile) (int64, error) {
	var total atomic.Int64
	// No error stops the others: every file is compressed, and the first
	// failure reported.
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for _, f := range files {
		g.Go(func() error {
			out, err := exec.CommandContext(ctx, "zstd", "-19", "-q", "-c", f.path).Output()
			if err != nil {
				return fmt.Errorf("zstd %s: %w", f.path, err)
			}
			total.Add(int64(len(out)))
			return nil
		})
	}
	err := g.Wait()
	return total.Load(), err
}

var rsyncSent = regexp.MustCompile(`Total bytes sent: ([0-9,]+)`)

// rsyncBytes updates a copy of the old tree to the new one with rsync's
// delta algorithm and reports what the sender put on the wire.
func rsyncBytes(ctx context.Context, work, oldTree, newTree string) (int64, error) {
	dest := filepath.Join(work, "rsync-dest")
	if out, err := exec.CommandContext(ctx, "cp", "-a", oldTree, dest).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("cp: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, "rsync", "-a", "--no-whole-file", "--stats", newTree+"/", dest+"/").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v\n%s", err, out)
	}
	m := rsyncSent.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no byte count in rsync's output:\n%s", out)
	}
	return strconv.ParseInt(strings.ReplaceAll(string(m[1]), ",", ""), 10, 64)
}
