package apply_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"peerup/apply"
	"peerup/manifest"
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
