package apply_test

import (
	"context"
	"os"
	"testing"
)

// TestLocalConfigSurvivesUpdates: a laptop's own settings, kept under
// SYSROOT/local, replace the image's file in every tree built afterwards,
// and verify does not take them for damage.
func TestLocalConfigSurvivesUpdates(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/etc/hostname", "image-default\n", 0o644)
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	write(t, s.LocalDir()+"/etc/hostname", "room-12-laptop-07\n", 0o644)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	write(t, tree+"/etc/hostname", "new-image-default\n", 0o644)
	f.publish(tree, 2)
	f.update(s, 2)
	got, _ := os.ReadFile(s.Dir() + "/current/etc/hostname")
	if string(got) != "room-12-laptop-07\n" {
		t.Fatalf("current/etc/hostname = %q: the local edit did not survive", got)
	}
	rel, _ := os.ReadFile(s.Dir() + "/current/etc/os-release")
	if string(rel) != "VERSION=2\n" {
		t.Fatalf("the rest of the update is missing: %q", rel)
	}
	if probs, err := s.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Fatalf("verify: %v, %v", probs, err)
	}
}
