package apply_test

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// TestVerifyFindsInPlaceEditAndRepairFixesIt: editing a hard-linked file
// through one tree damages every tree sharing it; verify reports each, and
// repair restores them from a peer.
func TestVerifyFindsInPlaceEditAndRepairFixesIt(t *testing.T) {
	f, s, tree := bootFleet(t) // v2 current, v1 previous
	ctx := context.Background()
	if probs, err := s.Verify(ctx); err != nil || len(probs) != 0 {
		t.Fatalf("fresh trees: %v, %v", probs, err)
	}
	good, _ := os.ReadFile(s.Dir() + "/current/usr/lib/big.so")
	// A careless admin edits a library in place.
	editInPlace(t, s.Dir()+"/current/usr/lib/big.so")
	probs, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	versions := map[uint64]bool{}
	store := 0
	for _, p := range probs {
		if p.Path == "usr/lib/big.so" && strings.Contains(p.What, "changed in place") {
			versions[p.Version] = true
		}
		if p.Path == "usr/lib/big.so" && strings.Contains(p.What, "in the store holds other bytes") {
			store++ // the store's object shares the inode
		}
	}
	if !versions[1] || !versions[2] || store != 1 || len(probs) != 3 {
		t.Fatalf("verify found %v; want big.so in both versions and in the store", probs)
	}
	if _, err := s.Repair(ctx, f.client()); err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(ctx); err != nil || len(probs) != 0 {
		t.Fatalf("after repair: %v, %v", probs, err)
	}
	for _, v := range []string{"1", "2"} {
		got, _ := os.ReadFile(s.Dir() + "/trees/" + v + "/usr/lib/big.so")
		if string(got) != string(good) {
			t.Fatalf("tree %s still damaged", v)
		}
	}
	buildsRight(t, f, s, tree)
}

func TestVerifyReportsMetadataChanges(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	os.Chmod(s.Dir()+"/current/usr", 0o777) // not etc: that is the node's own
	os.Remove(s.Dir() + "/current/bin")
	os.Symlink("elsewhere", s.Dir()+"/current/bin")
	probs, err := s.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range probs {
		got[p.Path] = p.What
	}
	if !strings.Contains(got["usr"], "mode 0777") || !strings.Contains(got["bin"], "symlink to") {
		t.Fatalf("problems: %v", probs)
	}
	// The symlink is made anew; a directory is not replaced, and says so.
	if _, err := s.Repair(context.Background(), f.client()); err == nil || !strings.Contains(err.Error(), "reinstall the version") {
		t.Fatalf("repair of a directory's mode: %v", err)
	}
	if target, _ := os.Readlink(s.Dir() + "/current/bin"); target != "usr/bin" {
		t.Errorf("bin after the repair points at %q", target)
	}
	probs, _ = s.Verify(context.Background())
	if len(probs) != 1 || probs[0].Path != "usr" {
		t.Errorf("after the repair: %v", probs)
	}
}

// TestVerifyFindsStoreDamageAndRepairRestoresIt: trees that match their
// manifests over a store that lost an object, holds one with other bytes,
// or a checkout file edited in place, are not "all well": verify names
// each, and repair fetches or makes each anew, so the store can build,
// export and serve again.
func TestVerifyFindsStoreDamageAndRepairRestoresIt(t *testing.T) {
	f, s, tree := bootFleet(t) // v2 current, v1 previous
	ctx := context.Background()
	digest := func(data string) manifest.Digest { return manifest.Digest(sha256.Sum256([]byte(data))) }
	lost := s.Repo().Path(digest("#!/bin/sh\necho tool\n"))
	if err := os.Remove(lost); err != nil {
		t.Fatal(err)
	}
	// etc/'s files are copies: their object's inode is the store's alone.
	edited := s.Repo().Path(digest("VERSION=2\n"))
	os.Chmod(edited, 0o644)
	write(t, edited, "VERSION=9\n", 0o444)
	// same-b's checkout file, no longer the inode its trees link.
	var same manifest.Entry
	for _, e := range storedEntries(t, s, 2) {
		if e.Path == "usr/share/same-b" {
			same = e
		}
	}
	checkout := s.Repo().FilePath(blobstore.FileID(same.SHA256, blobstore.MetaOf(&same)))
	for _, v := range []string{"1", "2"} {
		p := s.Dir() + "/trees/" + v + "/usr/share/same-b"
		if out, err := exec.Command("cp", "-a", checkout, p+".new").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if err := os.Rename(p+".new", p); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(checkout, 0o644)
	os.WriteFile(checkout, []byte("other byte"), 0)
	os.Chmod(checkout, 0o600)

	probs, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"usr/bin/tool": "missing from the store", "etc/os-release": "in the store holds other bytes",
		"usr/share/same-b": "its checkout file in the store: content changed"}
	for _, p := range probs {
		if w, ok := want[p.Path]; ok && strings.Contains(p.What, w) {
			delete(want, p.Path)
		}
	}
	if len(want) > 0 || len(probs) != 3 {
		t.Fatalf("verify found %v; still want %v", probs, want)
	}
	if _, err := s.Repair(ctx, f.client()); err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(ctx); err != nil || len(probs) != 0 {
		t.Fatalf("after repair: %v, %v", probs, err)
	}
	for p, data := range map[string]string{lost: "#!/bin/sh\necho tool\n", edited: "VERSION=2\n", checkout: "same bytes"} {
		if got, err := os.ReadFile(p); string(got) != data {
			t.Errorf("%s after repair: %q, %v", p, got, err)
		}
	}
	buildsRight(t, f, s, tree)
}

// TestRepairLeftoverTemporaryDoesNotBlock: an older peerup's repair,
// killed, left <path>.peerup-repair.tmp and <path>.peerup-repair in a
// tree. Verify names them, and repair removes them and mends the path
// they were made for; a file the image itself names so stays.
func TestRepairLeftoverTemporaryDoesNotBlock(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/share/doc/notes.peerup-repair.tmp", "the image's own file", 0o644)
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	ctx := context.Background()
	big := s.Dir() + "/current/usr/lib/big.so"
	editInPlace(t, big)
	write(t, big+".peerup-repair.tmp", "half a copy", 0o600)
	write(t, big+".peerup-repair", "a whole copy", 0o755)
	probs, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	for _, p := range probs {
		if strings.Contains(p.What, "interrupted repair") {
			left++
			if !strings.HasPrefix(p.Path, "usr/lib/big.so.peerup-repair") {
				t.Errorf("not a leftover: %s", p)
			}
		}
	}
	if left != 2 {
		t.Fatalf("verify found %v; want both leftovers", probs)
	}
	if _, err := s.Repair(ctx, f.client()); err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(ctx); err != nil || len(probs) != 0 {
		t.Fatalf("after repair: %v, %v", probs, err)
	}
	for _, p := range []string{big + ".peerup-repair.tmp", big + ".peerup-repair"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there", p)
		}
	}
	if got, _ := os.ReadFile(s.Dir() + "/current/usr/share/doc/notes.peerup-repair.tmp"); string(got) != "the image's own file" {
		t.Errorf("the image's own notes.peerup-repair.tmp: %q", got)
	}
}

// TestRepairMakesReplacementsDurableBeforeRenaming: a power cut must not
// leave an empty file in a tree, so nothing is renamed into a tree before
// the one syncfs, and nothing is made inside a kept tree.
func TestRepairMakesReplacementsDurableBeforeRenaming(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	editInPlace(t, s.Dir()+"/current/usr/lib/big.so")
	os.Remove(s.Dir() + "/current/usr/bin/tool")
	var points []string
	s.Fault = func(p string) { points = append(points, p) }
	if _, err := s.Repair(context.Background(), f.client()); err != nil {
		t.Fatal(err)
	}
	synced, renamed := slices.Index(points, "syncfs"), 0
	for i, p := range points {
		if strings.HasPrefix(p, "repair rename ") {
			renamed++
			if synced < 0 || i < synced {
				t.Errorf("%q before the syncfs: %v", p, points)
			}
		}
	}
	if renamed != 2 || strings.Count(strings.Join(points, "\n"), "syncfs") != 1 {
		t.Errorf("want one syncfs and two renames: %v", points)
	}
}

// editInPlace is a careless admin editing a file through a tree: every
// tree and store name sharing its inode changes with it.
func editInPlace(t *testing.T, path string) {
	t.Helper()
	fd, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if _, err := fd.WriteAt([]byte("EDITED"), 100); err != nil {
		t.Fatal(err)
	}
}

// buildsRight asserts that the store is sound after a repair: v3, built
// from it, verifies.
func buildsRight(t *testing.T, f *fleet, s *apply.Sysroot, tree string) {
	t.Helper()
	write(t, tree+"/etc/os-release", "VERSION=3\n", 0o644)
	f.publish(tree, 3)
	f.update(s, 3)
	if probs, err := s.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Fatalf("v3 built from the repaired store: %v %v", probs, err)
	}
}

// TestRepairMendsTheRestWhenTheSourceLacksAnObject: the publisher has
// dropped an old version's object, which previous needs; repair says so,
// leaves that as it found it, and mends current all the same.
func TestRepairMendsTheRestWhenTheSourceLacksAnObject(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/usr/share/old-only", "only version 1 has this", 0o644)
	f.publish(tree, 1)
	os.Remove(tree + "/usr/share/old-only")
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	f.publish(tree, 2)
	s := newSysroot(t)
	f.update(s, 1)
	f.update(s, 2)
	old := manifest.Digest(sha256.Sum256([]byte("only version 1 has this")))
	for _, p := range []string{s.Repo().Path(old), f.repo.Path(old)} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	editInPlace(t, s.Dir()+"/current/usr/lib/big.so")
	_, err := s.Repair(context.Background(), f.client())
	if err == nil || !strings.Contains(err.Error(), "could not give the objects of usr/share/old-only") {
		t.Fatalf("repair without the old object: %v", err)
	}
	probs, err := s.Verify(context.Background())
	if err != nil || len(probs) != 1 || probs[0].Path != "usr/share/old-only" || probs[0].Version != 1 {
		t.Fatalf("after the repair: %v, %v", probs, err)
	}
}
