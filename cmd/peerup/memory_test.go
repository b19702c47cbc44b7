package main

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"peerup/blobstore"
	"peerup/internal/debdata"
	"peerup/internal/memcg"
	"peerup/internal/vmtest"
	"peerup/transfer"
)

// The bounds a 256 MB laptop with a desktop running leaves an update.
const (
	laptopCgroup = 96 << 20
	laptopRSS    = 48 << 20
)

// securityUpdateLab is a real Debian 12 system (the VM tests' debootstrap
// image) with a 13-package security rollup published over it as v1 (before)
// and v2 (after), served over HTTP, and a laptop sysroot running v1.
type securityUpdateLab struct {
	bin, url, pub, snapshot string
}

func newSecurityUpdateLab(t *testing.T) *securityUpdateLab {
	t.Helper()
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
	l := &securityUpdateLab{bin: buildPeerup(t), pub: filepath.Join(work, "fleet.pub")}
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
	run("publish", "--repo", repo, "--image", "debian", "--key", filepath.Join(work, "fleet.key"), "--version", "1", oldTree)
	t.Log(strings.TrimSpace(run("publish", "--repo", repo, "--image", "debian", "--key", filepath.Join(work, "fleet.key"), "--version", "2", newTree)))
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
func (l *securityUpdateLab) laptop(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "sysroot")
	script := `cp -al "$0" "$1" && for e in "$0"/trees/*/etc; do t="$1/${e#"$0"/}"; rm -rf "$t" && cp -a "$e" "$t" || exit 1; done`
	if out, err := exec.Command("/bin/sh", "-c", script, l.snapshot, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy the laptop: %v\n%s", err, out)
	}
	return dir
}

func current(t *testing.T, sysroot string) string {
	t.Helper()
	cur, _ := os.Readlink(filepath.Join(sysroot, "current"))
	return cur
}

// TestSecurityUpdateFitsA256MBLaptop: a real multi-package Debian security
// update, run as `peerup update` and by the daemon, each inside a 96 MiB
// memory cgroup, succeeds with a peak RSS of at most 48 MiB.
func TestSecurityUpdateFitsA256MBLaptop(t *testing.T) {
	l := newSecurityUpdateLab(t)
	cases := []struct {
		name string
		args func(sysroot string) []string
		// wait, if set, says when a long-running command has done its job.
		wait func(sysroot string) bool
	}{
		{name: "peerup update", args: func(s string) []string {
			return []string{"update", "--sysroot", s, "--from", l.url, "--trust", l.pub}
		}},
		{name: "peerup daemon", args: func(s string) []string {
			return []string{"daemon", "--sysroot", s, "--trust", l.pub, "--peer", l.url, "--policy", "auto",
				"--bus", "none", "--no-mdns", "--no-multicast", "--listen", "127.0.0.1:0", "--poll-interval", "1s"}
		}, wait: func(s string) bool { return strings.HasSuffix(current(t, s), "/2") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sysroot := l.laptop(t)
			g, err := memcg.New("update", laptopCgroup)
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
			if tc.wait != nil {
			wait:
				for !tc.wait(sysroot) {
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
					err = <-exited
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
			t.Logf("%s of the security update: peak RSS %.1f MiB (bound %d MiB), cgroup peak %.1f MiB with page cache (limit %d MiB), %.1fs",
				tc.name, float64(rss)/(1<<20), laptopRSS>>20, float64(peak)/(1<<20), laptopCgroup>>20, took.Seconds())
			if g.OOMKilled() {
				t.Fatalf("%s was killed for want of memory in a %d MiB cgroup\n%s", tc.name, laptopCgroup>>20, tail(out.String()))
			}
			if err != nil && tc.wait == nil {
				t.Fatalf("%s: %v\n%s", tc.name, err, tail(out.String()))
			}
			if cur := current(t, sysroot); !strings.HasSuffix(cur, "/2") {
				t.Fatalf("after %s current is %q, want trees/2\n%s", tc.name, cur, tail(out.String()))
			}
			if out, err := exec.Command(l.bin, "verify", "--sysroot", sysroot).CombinedOutput(); err != nil {
				t.Errorf("peerup verify after %s: %v\n%s", tc.name, err, tail(string(out)))
			}
			if rss > laptopRSS {
				t.Errorf("%s: peak RSS %.1f MiB, over the %d MiB a laptop leaves an update", tc.name, float64(rss)/(1<<20), laptopRSS>>20)
			}
		})
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return fmt.Sprint(strings.Join(lines, "\n"))
}
