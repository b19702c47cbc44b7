package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
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
	o := blobstore.PublishOptions{Image: "school-laptop", Signer: manifest.NewSigner(e), AllowSame: true}
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

// TestPublishRefusesAKeyTheFleetDoesNotTrust: the repo remembers the key
// of its first publish; a publish signed by another key is refused, names
// the key and leaves the repo as it was, until a fleet key introduces it
// (--add-key); --any-key overrides.
func TestPublishRefusesAKeyTheFleetDoesNotTrust(t *testing.T) {
	dir := t.TempDir()
	repo, err := blobstore.OpenRepo(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	key := func(name string) *manifest.Signer {
		e, err := manifest.GenerateKey(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := manifest.WriteKeyPair(e, dir, name); err != nil {
			t.Fatal(err)
		}
		return manifest.NewSigner(e)
	}
	fleet, other := key("fleet"), key("other")
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	publish := func(s *manifest.Signer, o blobstore.PublishOptions) error {
		o.Image, o.Signer, o.AllowSame = "school-laptop", s, true
		_, err := repo.Publish(context.Background(), tree, o)
		return err
	}
	if err := publish(fleet, blobstore.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(repo.Layout().Index())
	err = publish(other, blobstore.PublishOptions{})
	if err == nil || !strings.Contains(err.Error(), other.Fingerprint()) || !strings.Contains(err.Error(), "not one this fleet trusts") {
		t.Fatalf("a publish with a key the fleet does not trust: %v", err)
	}
	if after, _ := os.ReadFile(repo.Layout().Index()); !bytes.Equal(after, before) {
		t.Fatal("the refused publish changed the index")
	}
	// The fleet key introduces the other one; then it signs.
	os.MkdirAll(filepath.Join(tree, manifest.TrustedKeysDir), 0o755)
	pub, _ := os.ReadFile(filepath.Join(dir, "other.pub"))
	os.WriteFile(filepath.Join(tree, manifest.TrustedKeysDir, "other.pub"), pub, 0o644)
	if err := publish(fleet, blobstore.PublishOptions{KeysAdd: []string{other.Fingerprint()}}); err != nil {
		t.Fatal(err)
	}
	if err := publish(other, blobstore.PublishOptions{KeysRevoke: []string{fleet.Fingerprint()}}); err != nil {
		t.Fatalf("the introduced key: %v", err)
	}
	if err := publish(fleet, blobstore.PublishOptions{}); err == nil {
		t.Fatal("a revoked key signed a publish")
	}
	if err := publish(fleet, blobstore.PublishOptions{AnyKey: true}); err != nil {
		t.Fatalf("--any-key: %v", err)
	}
}

// TestPublishRefusesMistakes: a second image beside the repo's (a
// mistyped --image) needs NewImage, and an unchanged tree AllowSame, unless
// the publish rolls keys or sets an expiry; each refusal says how to
// proceed and lists nothing.
func TestPublishRefusesMistakes(t *testing.T) {
	e, _ := manifest.GenerateKey("fleet")
	signer := manifest.NewSigner(e)
	repo, err := blobstore.OpenRepo(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	os.WriteFile(filepath.Join(tree, "os-release"), []byte("VERSION=1\n"), 0o644)
	publish := func(o blobstore.PublishOptions) error {
		if o.Image == "" {
			o.Image = "school-laptop"
		}
		o.Signer = signer
		_, err := repo.Publish(context.Background(), tree, o)
		return err
	}
	if err := publish(blobstore.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    blobstore.PublishOptions
		want string // "" for accepted
	}{
		{"a mistyped image", blobstore.PublishOptions{Image: "school-lapotp"}, "pass --new-image"},
		{"the same tree again", blobstore.PublishOptions{}, "the tree is the same as school-laptop version 1"},
		{"the same tree with only a new label", blobstore.PublishOptions{Label: "again"}, "pass --allow-same"},
		{"the same tree, renewing an expiry", blobstore.PublishOptions{Expires: time.Now().Add(720 * time.Hour)}, ""},
		{"the same tree, asked for", blobstore.PublishOptions{AllowSame: true}, ""},
		{"a second image, asked for", blobstore.PublishOptions{Image: "teacher-laptop", NewImage: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := listed(t, repo)
			err := publish(tc.o)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			case tc.want != "" && !slices.Equal(listed(t, repo), before):
				t.Fatal("the refused publish listed a version")
			}
		})
	}
	os.WriteFile(filepath.Join(tree, "os-release"), []byte("VERSION=2\n"), 0o644)
	if err := publish(blobstore.PublishOptions{}); err != nil {
		t.Fatalf("a changed tree: %v", err)
	}
}
