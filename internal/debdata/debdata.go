// Package debdata gives tests and the bench real Debian data: a security
// rollup of Debian 12 packages, downloaded with apt-get (cached between
// runs) and unpacked into an old and a new tree, optionally over a whole
// base system so that the trees have a real image's size and file count.
package debdata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Package is one package of a rollup: its name and the versions before and
// after.
type Package struct {
	Name, Old, New string
}

// SecurityUpdate is a real Debian 12 security rollup: each package from one
// point release of the security archive to the next (13 packages, about 640
// changed files, 61 MB of changed bytes).
func SecurityUpdate() []Package {
	return []Package{
		{"libssl3", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2"},
		{"openssl", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2"},
		{"libc6", "2.36-9+deb12u7", "2.36-9+deb12u14"},
		{"libc-bin", "2.36-9+deb12u7", "2.36-9+deb12u14"},
		{"systemd", "252.38-1~deb12u1", "252.39-1~deb12u2"},
		{"libsystemd0", "252.38-1~deb12u1", "252.39-1~deb12u2"},
		{"curl", "7.88.1-10+deb12u5", "7.88.1-10+deb12u15"},
		{"libcurl4", "7.88.1-10+deb12u5", "7.88.1-10+deb12u15"},
		{"openssh-client", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"},
		{"git", "1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u3"},
		{"python3.11", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"},
		{"libpython3.11-minimal", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"},
		{"libpython3.11-stdlib", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"},
	}
}

// DefaultCache is where downloaded .deb files are kept between runs.
const DefaultCache = "/var/cache/peerup-bench"

// ErrUnavailable is wrapped when the tools or the archive are missing, so
// a test can skip with the reason.
var ErrUnavailable = errors.New("debian packages unavailable")

// Trees downloads both versions of every package of pkgs into cache and
// unpacks each side into work/old and work/new. If base is not empty, each
// tree starts as a copy of it (hard links would let one side's unpack change
// the other's files, so it is a real copy).
func Trees(ctx context.Context, pkgs []Package, cache, work, base string) (oldTree, newTree string, err error) {
	for _, tool := range []string{"apt-get", "dpkg"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", "", fmt.Errorf("%w: no %s: %w", ErrUnavailable, tool, err)
		}
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", "", fmt.Errorf("debdata: %w", err)
	}
	oldTree, newTree = filepath.Join(work, "old"), filepath.Join(work, "new")
	for _, tree := range []string{oldTree, newTree} {
		if base == "" {
			if err := os.MkdirAll(tree, 0o755); err != nil {
				return "", "", fmt.Errorf("debdata: %w", err)
			}
			continue
		}
		if out, err := exec.CommandContext(ctx, "cp", "-a", base, tree).CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("debdata: copy %s: %v: %s", base, err, out)
		}
	}
	a := &archive{cache: cache}
	for _, p := range pkgs {
		p, err := a.resolve(ctx, p)
		if err != nil {
			return "", "", err
		}
		for i, tree := range []string{oldTree, newTree} {
			ver := p.Old
			if i == 1 {
				ver = p.New
			}
			file, err := a.download(ctx, p.Name, ver)
			if err != nil {
				return "", "", err
			}
			if out, err := exec.CommandContext(ctx, "dpkg", "-x", file, tree).CombinedOutput(); err != nil {
				return "", "", fmt.Errorf("debdata: dpkg -x %s: %v\n%s", file, err, out)
			}
		}
	}
	return oldTree, newTree, nil
}

// archive is the apt archive as this run sees it. Its package lists may be
// older than the versions pinned here (a machine whose tools were all
// installed never ran apt-get update), and the archive itself moves on: a
// point release drops the version it replaces.
type archive struct {
	cache   string
	updated bool
}

func (a *archive) file(name, ver string) string {
	// apt names files with the epoch's colon escaped.
	return filepath.Join(a.cache, fmt.Sprintf("%s_%s_amd64.deb", name, strings.ReplaceAll(ver, ":", "%3a")))
}

func (a *archive) cached(name, ver string) bool {
	_, err := os.Stat(a.file(name, ver))
	return err == nil
}

// resolve keeps p's pinned versions where they are cached or in the
// archive, refreshing stale package lists once when it may (root). Where
// the archive no longer has them, it takes the newest two versions it has,
// so that the data stays a real update between two releases of the
// package rather than the test or bench going without.
func (a *archive) resolve(ctx context.Context, p Package) (Package, error) {
	if a.cached(p.Name, p.Old) && a.cached(p.Name, p.New) {
		return p, nil
	}
	vers, err := a.versions(ctx, p.Name)
	if err != nil {
		return p, err
	}
	if (!slices.Contains(vers, p.Old) || !slices.Contains(vers, p.New)) && !a.updated && os.Geteuid() == 0 {
		a.updated = true
		if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
			return p, fmt.Errorf("%w: apt-get update: %v\n%s", ErrUnavailable, err, out)
		}
		if vers, err = a.versions(ctx, p.Name); err != nil {
			return p, err
		}
	}
	if slices.Contains(vers, p.Old) && slices.Contains(vers, p.New) {
		return p, nil
	}
	if len(vers) < 2 {
		return p, fmt.Errorf("%w: the archive has %d version(s) of %s (%s), and an update needs two", ErrUnavailable, len(vers), p.Name, strings.Join(vers, ", "))
	}
	return Package{Name: p.Name, Old: vers[1], New: vers[0]}, nil
}

// versions lists the versions of name the archive offers, newest first
// (apt-cache madison's order).
func (a *archive) versions(ctx context.Context, name string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "madison", name).Output()
	if err != nil {
		return nil, fmt.Errorf("%w: apt-cache madison %s: %w", ErrUnavailable, name, err)
	}
	return parseMadison(string(out)), nil
}

// parseMadison reads the binary package versions of apt-cache madison's
// output, in its order, once each; source lines are skipped.
func parseMadison(out string) []string {
	var vers []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "|")
		if len(f) < 3 || !strings.Contains(f[2], "Packages") {
			continue
		}
		if v := strings.TrimSpace(f[1]); !slices.Contains(vers, v) {
			vers = append(vers, v)
		}
	}
	return vers
}

func (a *archive) download(ctx context.Context, name, ver string) (string, error) {
	file := a.file(name, ver)
	if _, err := os.Stat(file); err == nil {
		return file, nil
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", name+"="+ver)
	cmd.Dir = a.cache
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: apt-get download %s=%s: %v\n%s", ErrUnavailable, name, ver, err, out)
	}
	return file, nil
}
