package apply_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/manifest"
)

// TestUpdatePullsSwitchesAndPrunes: each Update leaves the new version
// current, the old one previous, and no other tree on disk; one with
// nothing newer changes nothing.
func TestUpdatePullsSwitchesAndPrunes(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	s := newSysroot(t)
	tests := []struct {
		publish  uint64 // 0: publish nothing first
		wantFrom uint64
		wantCur  uint64
		trees    []uint64 // on disk after
		err      error
	}{
		{publish: 1, wantFrom: 0, wantCur: 1, trees: []uint64{1}},
		{publish: 2, wantFrom: 1, wantCur: 2, trees: []uint64{1, 2}},
		{publish: 3, wantFrom: 2, wantCur: 3, trees: []uint64{2, 3}},
		{publish: 0, wantCur: 3, trees: []uint64{2, 3}, err: apply.ErrUpToDate},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("v%d", tc.publish), func(t *testing.T) {
			if tc.publish != 0 {
				write(t, tree+"/etc/os-release", fmt.Sprintf("VERSION=%d\n", tc.publish), 0o644)
				f.publish(tree, tc.publish)
			}
			res, from, err := s.Update(context.Background(), f.client(), apply.PullOptions{Trust: f.trust})
			if tc.err != nil {
				if !errors.Is(err, tc.err) || res != nil {
					t.Fatalf("Update = %v, %v; want %v and no result", res, err, tc.err)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if res.Version != tc.publish || from != tc.wantFrom {
				t.Errorf("Update: version %d from %d, want %d from %d", res.Version, from, tc.publish, tc.wantFrom)
			}
			st, err := s.Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.Current != tc.wantCur || st.Staged != 0 {
				t.Errorf("status %+v, want current %d and nothing staged", st, tc.wantCur)
			}
			for v := uint64(1); v <= 3; v++ {
				_, err := os.Stat(s.TreePath(v))
				want := false
				for _, k := range tc.trees {
					want = want || k == v
				}
				if got := err == nil; got != want {
					t.Errorf("tree %d on disk: %v, want %v", v, got, want)
				}
			}
		})
	}
	// With nothing staged a Switch fails before switching, so it is no
	// ErrPrune and names no versions.
	if from, to, err := s.Switch(0); !errors.Is(err, apply.ErrNothingStaged) || errors.Is(err, apply.ErrPrune) || from != 0 || to != 0 {
		t.Errorf("Switch with nothing staged = %d, %d, %v", from, to, err)
	}
}

// TestBuildsAPathAtTheFormatLimit: a path of manifest.MaxPath bytes, as
// SPEC §1 allows, is published, built into a tree and verified.
func TestBuildsAPathAtTheFormatLimit(t *testing.T) {
	f := newFleet(t)
	tree := t.TempDir()
	var parts []string
	for n := 0; n+251 < manifest.MaxPath-10; n += 251 {
		parts = append(parts, strings.Repeat(string(rune('a'+len(parts))), 250))
	}
	rel := strings.Join(parts, "/")
	rel += "/" + strings.Repeat("z", manifest.MaxPath-len(rel)-1)
	if len(rel) != manifest.MaxPath {
		t.Fatalf("test broken: path of %d bytes", len(rel))
	}
	write(t, filepath.Join(tree, rel), "deep\n", 0o644)
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	if b, err := os.ReadFile(filepath.Join(s.TreePath(1), rel)); err != nil || string(b) != "deep\n" {
		t.Fatalf("the deep file: %q, %v", b, err)
	}
	if probs, err := s.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
}

// TestTreeBuiltWhileFetchingComesOutAsSigned: the tree is built while the
// changed files are still being fetched, and those files (and every
// directory above them) are finished afterwards. Wherever a changed file
// sits — a read-only directory, a deep one, beside unchanged files, under
// etc/ — the new tree is what was signed, and verify finds it clean.
func TestTreeBuiltWhileFetchingComesOutAsSigned(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	changed := []struct {
		path string
		dir  os.FileMode // the mode of the file's directory
	}{
		{"usr/lib/ro/libro.so", 0o555},
		{"usr/share/doc/a/b/c/deep.txt", 0o755},
		{"usr/share/private/key", 0o700},
		{"etc/app/app.conf", 0o750},
		{"top-level-file", 0o755},
	}
	publish := func(v int) {
		for _, c := range changed {
			p := filepath.Join(tree, c.path)
			os.Chmod(filepath.Dir(p), 0o755)
			write(t, p, fmt.Sprintf("%s at version %d\n%s", c.path, v, strings.Repeat("x", 100*v)), 0o644)
			write(t, p+".same", "unchanged beside it\n", 0o644)
		}
		for _, c := range changed {
			if c.path != "top-level-file" {
				os.Chmod(filepath.Dir(filepath.Join(tree, c.path)), c.dir)
			}
		}
		f.publish(tree, uint64(v))
	}
	s := newSysroot(t)
	for v := 1; v <= 3; v++ {
		publish(v)
		f.update(s, uint64(v))
		cur := filepath.Join(s.Dir(), "current") + "/"
		compareTrees(t, tree, cur)
		// A directory finished before its last file went in would carry
		// that moment as its mtime.
		filepath.Walk(cur, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() && fi.ModTime().Unix() != 0 {
				t.Errorf("v%d: %s has mtime %v, want the fixed epoch", v, p, fi.ModTime())
			}
			return nil
		})
		probs, err := s.Verify(context.Background())
		if err != nil || len(probs) != 0 {
			t.Fatalf("v%d: verify = %v, %v", v, probs, err)
		}
	}
}
