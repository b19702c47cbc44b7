package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

type benchFleet struct {
	repo   *blobstore.Repo
	signer *manifest.Signer
	trust  *manifest.Keyring
}

func newBenchFleet(dir string) (*benchFleet, error) {
	key, err := manifest.GenerateKey("bench")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if _, _, err := manifest.WriteKeyPair(key, dir, "bench"); err != nil {
		return nil, err
	}
	kr, err := manifest.LoadKeyring(filepath.Join(dir, "bench.pub"))
	if err != nil {
		return nil, err
	}
	repo, err := blobstore.OpenRepo(filepath.Join(dir, "repo"))
	if err != nil {
		return nil, err
	}
	return &benchFleet{repo: repo, signer: manifest.NewSigner(key), trust: kr}, nil
}

func treeStats(tree string) (files int, size int64) {
	filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files++
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	return files, size
}

// benchApply times building a version's tree from a store that already
// holds every object, durably, and switching to it, against cp -al of the
// same tree. Each timed pull builds a fresh tree: the same files under a new
// version number.
func benchApply(ctx context.Context, w io.Writer, tree, work string, n int) error {
	files, size := treeStats(tree)
	fmt.Fprintf(w, "\n== build and switch a tree: %s, %d files, %s ==\n", tree, files, mb(size))
	f, err := newBenchFleet(filepath.Join(work, "apply"))
	if err != nil {
		return err
	}
	srv := httptest.NewServer(transfer.NewHandler(f.repo.Dir(), nil).WithLimits(transfer.Limits{RequestRate: -1})) // measures speed, not abuse
	defer srv.Close()
	src, err := transfer.NewClient(srv.URL, nil)
	if err != nil {
		return err
	}
	sys, err := apply.Open(filepath.Join(work, "apply", "sysroot"))
	if err != nil {
		return err
	}
	v := uint64(0)
	next := func() error {
		v++
		if _, err := f.repo.Publish(ctx, tree, blobstore.PublishOptions{Image: "bench", Version: v, Signer: f.signer, Label: fmt.Sprint(v)}); err != nil {
			return err
		}
		return nil
	}
	update := func(v uint64) error {
		if _, err := sys.Pull(ctx, src, apply.PullOptions{Version: v, Trust: f.trust}); err != nil {
			return err
		}
		_, _, err := sys.Apply(v)
		return err
	}
	// Untimed: the node's store gets every object, and caches warm up.
	if err := next(); err != nil {
		return err
	}
	if err := update(v); err != nil {
		return err
	}
	first := v + 1
	for range n {
		if err := next(); err != nil {
			return err
		}
	}
	// Pruning the tree that drops out of previous is cleanup, like the rm
	// of cp -al's copies below, and stays outside the timing.
	oursT, err := medianWithReset(n, func() error { first++; return update(first - 1) }, sys.Prune)
	if err != nil {
		return err
	}
	cps := filepath.Join(work, "apply", "cp")
	c := 0
	cpal := func() error {
		c++
		dest := filepath.Join(cps, fmt.Sprint(c))
		os.MkdirAll(cps, 0o755)
		out, err := exec.CommandContext(ctx, "cp", "-al", tree, dest).CombinedOutput()
		if err != nil {
			return fmt.Errorf("cp -al: %v\n%s", err, out)
		}
		return nil
	}
	cpal() // warm
	cpT, err := median(n, cpal)
	if err != nil {
		return err
	}
	os.RemoveAll(cps)
	ratio := oursT.Seconds() / cpT.Seconds()
	fmt.Fprintf(w, "peerup pull+apply (durable: one syncfs, atomic switch) %.3fs vs cp -al %.3fs (no sync): ratio %.2f (target <= 1.3): %s\n",
		oursT.Seconds(), cpT.Seconds(), ratio, verdict(ratio <= 1.3))
	return nil
}

// benchHash times publishing the tree into an empty repo (hash and copy
// every file) and into a repo that holds every object (hash only), against
// sha256sum over the same files, caches warm for all.
func benchHash(ctx context.Context, w io.Writer, tree, work string, n int) error {
	files, size := treeStats(tree)
	fmt.Fprintf(w, "\n== publish hashing: %s, %d files, %s ==\n", tree, files, mb(size))
	var list []string
	filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			list = append(list, p)
		}
		return nil
	})
	sha := func() error {
		cmd := exec.CommandContext(ctx, "xargs", "-0", "sha256sum")
		cmd.Stdin = strings.NewReader(strings.Join(list, "\x00"))
		cmd.Stdout = io.Discard
		return cmd.Run()
	}
	sha() // warm the page cache
	shaT, err := median(n, sha)
	if err != nil {
		return err
	}
	base := filepath.Join(work, "hash")
	k := 0
	fresh := func() error {
		k++
		f, err := newBenchFleet(filepath.Join(base, fmt.Sprint(k)))
		if err != nil {
			return err
		}
		defer os.RemoveAll(filepath.Join(base, fmt.Sprint(k)))
		_, err = f.repo.Publish(ctx, tree, blobstore.PublishOptions{Image: "bench", Signer: f.signer})
		return err
	}
	freshT, err := median(n, fresh)
	if err != nil {
		return err
	}
	f, err := newBenchFleet(filepath.Join(base, "held"))
	if err != nil {
		return err
	}
	if _, err := f.repo.Publish(ctx, tree, blobstore.PublishOptions{Image: "bench", Signer: f.signer}); err != nil {
		return err
	}
	heldT, err := median(n, func() error {
		// The same tree again, on purpose: what hashing costs when the
		// store holds every object.
		_, err := f.repo.Publish(ctx, tree, blobstore.PublishOptions{Image: "bench", Signer: f.signer, AllowSame: true})
		return err
	})
	if err != nil {
		return err
	}
	rate := func(d float64) float64 { return float64(size) / 1e6 / d }
	hr := shaT.Seconds() / heldT.Seconds()
	fr := shaT.Seconds() / freshT.Seconds()
	fmt.Fprintf(w, "sha256sum %.0f MB/s (%.3fs)\n", rate(shaT.Seconds()), shaT.Seconds())
	fmt.Fprintf(w, "peerup publish, objects already held (hashing) %.0f MB/s (%.3fs): %.2f x sha256sum (target >= 0.9): %s\n",
		rate(heldT.Seconds()), heldT.Seconds(), hr, verdict(hr >= 0.9))
	fmt.Fprintf(w, "peerup publish into an empty repo (hash + store + sign + syncfs) %.0f MB/s (%.3fs): %.2f x sha256sum\n",
		rate(freshT.Seconds()), freshT.Seconds(), fr)
	return nil
}
