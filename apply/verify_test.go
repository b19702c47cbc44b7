package apply_test

import (
	"context"
	"os"
	"strings"
	"testing"
)

// TestVerifyFindsInPlaceEditAndRepairFixesIt: editing a hard-linked file
// through one tree damages every tree sharing it; verify reports each, and
// repair restores them from a peer.
func TestVerifyFindsInPlaceEditAndRepairFixesIt(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	f.publish(tree, 2)
	s := newSysroot(t)
	f.update(s, 1)
	f.update(s, 2)
	ctx := context.Background()
	if probs, err := s.Verify(ctx); err != nil || len(probs) != 0 {
		t.Fatalf("fresh trees: %v, %v", probs, err)
	}
	good, _ := os.ReadFile(s.Dir() + "/current/usr/lib/big.so")
	// A careless admin edits a library in place.
	fd, err := os.OpenFile(s.Dir()+"/current/usr/lib/big.so", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd.WriteAt([]byte("EDITED"), 100)
	fd.Close()
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
	// The store is sound again: a new version built from it is right.
	write(t, tree+"/etc/os-release", "VERSION=3\n", 0o644)
	f.publish(tree, 3)
	f.update(s, 3)
	if probs, _ := s.Verify(ctx); len(probs) != 0 {
		t.Fatalf("v3 built from the repaired store: %v", probs)
	}
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
}
