package apply_test

import (
	"crypto/sha256"
	"path/filepath"
	"testing"

	"github.com/peerup/peerup/manifest"
)

// TestGCRemovesExactlyWhatNoKeptVersionUses: after v1 → v2 → v3, gc drops
// v1 and the bytes only v1 had, keeps everything current and previous use,
// and a second gc finds nothing to do.
func TestGCRemovesExactlyWhatNoKeptVersionUses(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	s := newSysroot(t)
	libs := map[int]string{}
	for v := 1; v <= 3; v++ {
		libs[v] = library(v)
		write(t, tree+"/usr/lib/libschool.so.1", libs[v], 0o755)
		write(t, tree+"/etc/os-release", "VERSION="+string(rune('0'+v))+"\n", 0o644)
		f.publishWithDeltas(tree, uint64(v))
		f.update(s, uint64(v))
	}
	obj := func(data string) manifest.Digest { return manifest.Digest(sha256.Sum256([]byte(data))) }
	res, err := s.GC(-1)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Versions) != 1 || res.Versions[0] != 1 {
		t.Fatalf("dropped versions %v, want [1]", res.Versions)
	}
	repo := s.Repo()
	if repo.Has(obj(libs[1])) || repo.Has(obj("VERSION=1\n")) {
		t.Error("objects only v1 used are still there")
	}
	for v := 2; v <= 3; v++ {
		if !repo.Has(obj(libs[v])) {
			t.Errorf("v%d's library was removed", v)
		}
	}
	if !repo.Has(obj("root:*:1::::::\n")) {
		t.Error("an object all versions share was removed")
	}
	if ix, _ := repo.ReadIndex(); len(ix.Entries) != 2 {
		t.Errorf("index after gc: %v", ix.Entries)
	}
	compareTrees(t, tree, filepath.Join(s.Dir(), "current")+"/")
	if _, _, err := s.Rollback(); err != nil {
		t.Fatal(err)
	}
	again, err := s.GC(-1)
	if err != nil || again.Objects != 0 || again.Files != 0 || len(again.Versions) != 0 {
		t.Fatalf("second gc removed %+v, %v", again, err)
	}
}
