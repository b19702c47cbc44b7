package blobstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"peerup/blobstore"
	"peerup/internal/fsutil"
	"peerup/manifest"
)

func listed(t *testing.T, repo *blobstore.Repo) []uint64 {
	t.Helper()
	ix, err := repo.ReadIndex()
	if err != nil {
		t.Fatal(err)
	}
	var vs []uint64
	for _, e := range ix.Entries {
		vs = append(vs, e.Version)
	}
	return vs
}

// TestStageListsNothingUntilList: a staged version holds the repo's lock
// and is invisible until List; closed unlisted, its files go; a publish of
// a version a killed one left unlisted clears that attempt's delta index;
// and nothing touches a listed version.
func TestStageListsNothingUntilList(t *testing.T) {
	e, err := manifest.GenerateKey("fleet")
	if err != nil {
		t.Fatal(err)
	}
	o := blobstore.PublishOptions{Image: "school-laptop", Signer: manifest.NewSigner(e)}
	repo, err := blobstore.OpenRepo(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	if err := os.WriteFile(filepath.Join(tree, "f"), []byte("bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := repo.Publish(ctx, tree, o); err != nil {
		t.Fatal(err)
	}
	lay := repo.Layout()
	files := func(v uint64) []string {
		return []string{lay.Manifest(o.Image, v), lay.Signature(o.Image, v), lay.Deltas(o.Image, v), lay.DeltasSignature(o.Image, v)}
	}
	present := func(p string) bool { _, err := os.Stat(p); return err == nil }

	p, err := repo.Stage(ctx, tree, o)
	if err != nil {
		t.Fatal(err)
	}
	if !present(lay.Manifest(o.Image, 2)) {
		t.Error("staged v2 has no manifest in place")
	}
	if got := listed(t, repo); !slices.Equal(got, []uint64{1}) {
		t.Errorf("with v2 staged the index lists %v", got)
	}
	if _, err := repo.Stage(ctx, tree, o); !errors.Is(err, fsutil.ErrBusy) {
		t.Errorf("a second publish beside a staged one: %v, want busy", err)
	}
	// A delta index made for the staged version, then the publish gives up.
	for _, f := range files(2)[2:] {
		os.WriteFile(f, []byte("made for v2"), 0o644)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files(2) {
		if present(f) {
			t.Errorf("%s is left by a version closed unlisted", f)
		}
	}

	// What a publish killed before listing v2 leaves: its files, unlisted.
	for _, f := range files(2) {
		os.WriteFile(f, []byte("from a killed publish"), 0o644)
	}
	if _, err := repo.Publish(ctx, tree, o); err != nil {
		t.Fatal(err)
	}
	if got := listed(t, repo); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("after publishing v2 the index lists %v", got)
	}
	for _, f := range files(2)[2:] {
		if present(f) {
			t.Errorf("%s of a killed publish survived beside the new manifest", f)
		}
	}
	if err := repo.ClearUnlisted(o.Image, 2); err != nil || !present(lay.Manifest(o.Image, 2)) {
		t.Errorf("ClearUnlisted of a listed version: %v; manifest present %v", err, present(lay.Manifest(o.Image, 2)))
	}
}
