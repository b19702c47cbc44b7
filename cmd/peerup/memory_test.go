package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/debdata"
	"github.com/peerup/peerup/internal/memcg"
	"github.com/peerup/peerup/internal/vmtest"
	"github.com/peerup/peerup/transfer"
)

// The bounds a 256 MB laptop with a desktop running leaves an update.
const (
	laptopCgroup = 96 << 20
	laptopRSS    = 48 << 20
)

// updateLab is an image published as v1 and v2 from two trees, served
// over HTTP, and a laptop sysroot running v1.
type updateLab struct {
	bin, url, pub, snapshot string
}

// newUpdateLab publishes oldTree as v1 and newTree as v2 (with encodings,
// as a school server would) and installs v1 on a laptop. It removes the
// trees once published.
func newUpdateLab(t *testing.T, work, oldTree, newTree string) *updateLab {
	t.Helper()
	l := &updateLab{bin: buildPeerup(t), pub: filepath.Join(work, "fleet.pub")}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(l.bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("peerup %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("keygen", "--out", work)
	repo := filepath.Join(work, "repo")
	key := filepath.Join(work, "fleet.key")
	run("publish", "--repo", repo, "--image", "debian", "--key", key, "--version", "1", oldTree)
	t.Log(strings.TrimSpace(run("publish", "--repo", repo, "--image", "debian", "--key", key, "--version", "2", newTree)))
	os.RemoveAll(oldTree)
	os.RemoveAll(newTree)
	r, err := blobstore.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(transfer.NewHandler(r.Dir(), nil))
	t.Cleanup(srv.Close)
	l.url = srv.URL + "/"
	l.snapshot = filepath.Join(work, "laptop-v1")
	run("update", "--sysroot", l.snapshot, "--from", l.url, "--trust", l.pub, "--version", "1")
	return l
}

// laptop returns a fresh copy of the v1 laptop. Hard links do for the
// store and the trees, which a sysroot never writes in place; each tree's
// /etc is the node's own copy, so it is copied.
func (l *updateLab) laptop(t *testing.T) string {
	t.Helper()
	return copySysroot(t, l.snapshot)
}

// copySysroot returns a fresh copy of the sysroot at snapshot, sharing its
// store and trees by hard link (see updateLab.laptop).
func copySysroot(t *testing.T, snapshot string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "sysroot")
	script := `cp -al "$0" "$1" && for e in "$0"/trees/*/etc; do t="$1/${e#"$0"/}"; rm -rf "$t" && cp -a "$e" "$t" || exit 1; done`
	if out, err := exec.Command("/bin/sh", "-c", script, snapshot, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy the laptop: %v\n%s", err, out)
	}
	return dir
}

func current(sysroot string) string {
	cur, _ := os.Readlink(filepath.Join(sysroot, "current"))
	return cur
}

// updateCase is one way a laptop takes the update.
type updateCase struct {
	name string
	args func(sysroot string) []string
	// daemon: the command runs until stopped, once it has switched.
	daemon bool
}

func (l *updateLab) cases() []updateCase {
	return []updateCase{
		{name: "peerup update", args: func(s string) []string {
			return []string{"update", "--sysroot", s, "--from", l.url, "--trust", l.pub}
		}},
		{name: "peerup daemon", daemon: true, args: func(s string) []string {
			return []string{"daemon", "--sysroot", s, "--trust", l.pub, "--peer", l.url, "--policy", "auto",
				"--bus", "none", "--no-mdns", "--no-multicast", "--listen", "127.0.0.1:0", "--poll-interval", "1s"}
		}},
	}
}

// update runs tc on a fresh v1 laptop inside a memory cgroup of limit
// bytes, checks that the laptop switched to v2 and verifies clean, and
// returns the command's peak RSS.
func (l *updateLab) update(t *testing.T, tc updateCase, limit int64, what string) int64 {
	t.Helper()
	sysroot := l.laptop(t)
	g, err := memcg.New("update", limit)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rssFile := filepath.Join(t.TempDir(), "rss")
	cmd := g.Command(ctx, rssFile, l.bin, tc.args(sysroot)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if tc.daemon {
	wait:
		for !strings.HasSuffix(current(sysroot), "/2") {
			select {
			case err = <-exited:
				break wait
			case <-ctx.Done():
				break wait
			case <-time.After(200 * time.Millisecond):
			}
		}
		if err == nil {
			if err := memcg.Signal(cmd, syscall.SIGTERM); err != nil {
				t.Error(err)
			}
			<-exited // stopped by us: its exit status says nothing
		}
	} else {
		err = <-exited
	}
	took := time.Since(start)
	rss, rerr := memcg.PeakRSS(rssFile)
	if rerr != nil {
		t.Error(rerr)
	}
	peak, _ := g.Peak()
	t.Logf("%s of %s: peak RSS %.1f MiB, cgroup peak %.1f MiB with page cache (limit %d MiB), %.1fs",
		tc.name, what, float64(rss)/(1<<20), float64(peak)/(1<<20), limit>>20, took.Seconds())
	if g.OOMKilled() {
		t.Fatalf("%s was killed for want of memory in a %d MiB cgroup\n%s", tc.name, limit>>20, tail(out.String()))
	}
	if err != nil {
		t.Fatalf("%s: %v\n%s", tc.name, err, tail(out.String()))
	}
	if cur := current(sysroot); !strings.HasSuffix(cur, "/2") {
		t.Fatalf("after %s current is %q, want trees/2\n%s", tc.name, cur, tail(out.String()))
	}
	if out, err := exec.Command(l.bin, "verify", "--sysroot", sysroot).CombinedOutput(); err != nil {
		t.Errorf("peerup verify after %s: %v\n%s", tc.name, err, tail(string(out)))
	}
	return rss
}

// TestSecurityUpdateFitsA256MBLaptop: a real multi-package Debian security
// update over a real Debian system (the VM tests' debootstrap image, 13
// packages from one security point release to the next), run as `peerup
// update` and by the daemon, each inside a 96 MiB memory cgroup, succeeds
// with a peak RSS of at most 48 MiB.
func TestSecurityUpdateFitsA256MBLaptop(t *testing.T) {
	if why := memcg.Available(); why != "" {
		t.Skip("memcg: " + why)
	}
	ctx := context.Background()
	base, err := vmtest.Base(ctx, vmtest.BaseOptions{Logf: t.Logf})
	if err != nil {
		t.Skipf("no Debian base image to update (the VM tests build it with debootstrap): %v", err)
	}
	work := t.TempDir()
	oldTree, newTree, err := debdata.Trees(ctx, debdata.SecurityUpdate(), debdata.DefaultCache, work, base)
	if errors.Is(err, debdata.ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	l := newUpdateLab(t, work, oldTree, newTree)
	for _, tc := range l.cases() {
		t.Run(tc.name, func(t *testing.T) {
			if rss := l.update(t, tc, laptopCgroup, "the security update"); rss > laptopRSS {
				t.Errorf("%s: peak RSS %.1f MiB, over the %d MiB a laptop leaves an update", tc.name, float64(rss)/(1<<20), laptopRSS>>20)
			}
		})
	}
}

// TestLargeFileFitsTheBudget: a 256 MiB file (real binaries from this
// Debian system, end to end) changed in 64 scattered places is fetched and
// applied in a 96 MiB cgroup with a peak RSS of at most 64 MiB, whichever
// way it comes (here zstd whole: no dictionary or patch against so large a
// base fits a laptop).
func TestLargeFileFitsTheBudget(t *testing.T) {
	if why := memcg.Available(); why != "" {
		t.Skip("memcg: " + why)
	}
	const size, bound = 256 << 20, 64 << 20
	work := t.TempDir()
	oldTree, newTree := filepath.Join(work, "old"), filepath.Join(work, "new")
	data, err := realBytes(size, "/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib", "/usr/share")
	if err != nil {
		t.Skip(err)
	}
	for _, d := range []string{oldTree, newTree} {
		os.MkdirAll(filepath.Join(d, "usr/share/big"), 0o755)
	}
	if err := os.WriteFile(filepath.Join(oldTree, "usr/share/big/data.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 64 {
		off, src := r.IntN(size-4096), r.IntN(size-4096)
		copy(data[off:off+4096], data[src:src+4096])
	}
	if err := os.WriteFile(filepath.Join(newTree, "usr/share/big/data.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	data = nil
	l := newUpdateLab(t, work, oldTree, newTree)
	tc := l.cases()[0]
	if rss := l.update(t, tc, laptopCgroup, "a 256 MiB file"); rss > bound {
		t.Errorf("%s of a 256 MiB file: peak RSS %.1f MiB, over %d MiB", tc.name, float64(rss)/(1<<20), bound>>20)
	}
}

// realBytes concatenates the regular files under dirs, in a fixed order,
// into n bytes.
func realBytes(n int, dirs ...string) ([]byte, error) {
	out := make([]byte, 0, n)
	errFull := errors.New("full")
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			out = append(out, b[:min(len(b), n-len(out))]...)
			if len(out) == n {
				return errFull
			}
			return nil
		})
		if errors.Is(err, errFull) {
			return out, nil
		}
	}
	return nil, fmt.Errorf("only %d bytes of real files under %v", len(out), dirs)
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
