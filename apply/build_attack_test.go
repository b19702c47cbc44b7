package apply

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// TestAttackHostilePathsBuildLayer asserts that the builder refuses, on
// its own, entries that would be written outside its tree, should one ever
// reach it past the manifest reader: "..", absolute paths, a child of a
// symlink (a -> outside, then a/passwd), a child of a parent never built,
// and entries the policy forbids. Nothing appears outside the tree.
func TestAttackHostilePathsBuildLayer(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	store, err := blobstore.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	root := &manifest.Entry{Path: ".", Type: manifest.TypeDir, Mode: 0o755}
	dirEntry := func(p string) *manifest.Entry { return &manifest.Entry{Path: p, Type: manifest.TypeDir, Mode: 0o755} }
	for _, tc := range []struct {
		name    string
		entries []*manifest.Entry
		policy  EntryPolicy
		want    error
	}{
		{"dot-dot", []*manifest.Entry{root, dirEntry("../outside/evil")}, EntryPolicy{}, ErrUnsafePath},
		{"absolute", []*manifest.Entry{root, dirEntry(outside + "/evil")}, EntryPolicy{}, ErrUnsafePath},
		{"through a symlink", []*manifest.Entry{root,
			{Path: "a", Type: manifest.TypeSymlink, Mode: 0o777, Target: outside},
			dirEntry("a/evil")}, EntryPolicy{}, ErrUnsafePath},
		{"parent never built", []*manifest.Entry{root, dirEntry("x/y")}, EntryPolicy{}, ErrUnsafePath},
		{"second root", []*manifest.Entry{root, dirEntry("a"), root}, EntryPolicy{}, ErrUnsafePath},
		{"device node", []*manifest.Entry{root, {Path: "sda", Type: manifest.TypeBlock, Mode: 0o666, Major: 8}}, EntryPolicy{NoDevices: true}, ErrForbidden},
		{"setuid file", []*manifest.Entry{root, {Path: "su", Type: manifest.TypeFile, Mode: 0o4755}}, EntryPolicy{NoSetuid: true}, ErrForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tree, err := os.MkdirTemp(dir, "tree-")
			if err != nil {
				t.Fatal(err)
			}
			b, err := store.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer b.Abort()
			bld := &builder{root: tree, store: store, batch: b, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), policy: tc.policy}
			var last error
			for _, e := range tc.entries {
				if last = bld.add(e, ""); last != nil {
					break
				}
			}
			if !errors.Is(last, tc.want) {
				t.Fatalf("err = %v, want %v", last, tc.want)
			}
			if names, _ := os.ReadDir(outside); len(names) != 0 {
				t.Fatalf("written outside the tree: %v", names)
			}
			if _, err := os.Lstat(filepath.Join(dir, "evil")); err == nil {
				t.Fatal("written beside the tree")
			}
		})
	}
}
