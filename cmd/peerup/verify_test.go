package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVerifyStoreAndRepair: by the CLI alone, a laptop whose store lost an
// object, whose library was edited in place and whose tree holds what an
// older repair left is not "all well"; verify --repair mends all of it
// from the publisher's folder, and verify then passes.
func TestVerifyStoreAndRepair(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	run, must := cli(t, bin)
	must("keygen", "--name", "fleet", "--out", dir)
	tree, repo, sysroot := filepath.Join(dir, "tree"), filepath.Join(dir, "repo"), filepath.Join(dir, "sysroot")
	tool, lib := "#!/bin/sh\necho tool\n", strings.Repeat("library code ", 20000)
	os.MkdirAll(tree+"/usr/lib", 0o755)
	os.MkdirAll(tree+"/usr/bin", 0o755)
	os.WriteFile(tree+"/usr/bin/tool", []byte(tool), 0o755)
	os.WriteFile(tree+"/usr/lib/libschool.so", []byte(lib), 0o755)
	must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/fleet.key", "--version", "1", tree)
	must("update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", repo)
	if out := must("verify", "--sysroot", sysroot); !strings.Contains(out, "all kept trees, and the store objects they need, match") {
		t.Fatalf("verify of a fresh install: %s", out)
	}

	h := sha256.Sum256([]byte(tool))
	d := hex.EncodeToString(h[:])
	object := filepath.Join(sysroot, "peerup/repo/objects", d[:2], d)
	if err := os.Remove(object); err != nil {
		t.Fatal(err)
	}
	fd, err := os.OpenFile(filepath.Join(sysroot, "current/usr/lib/libschool.so"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd.WriteAt([]byte("EDITED"), 100)
	fd.Close()
	os.WriteFile(filepath.Join(sysroot, "current/usr/lib/libschool.so.peerup-repair.tmp"), []byte("half"), 0o600)

	out, err := run("verify", "--sysroot", sysroot)
	for _, want := range []string{"usr/bin/tool: object " + d + " missing from the store", "usr/lib/libschool.so: content changed in place",
		"libschool.so.peerup-repair.tmp: left by an interrupted repair", "problems found"} {
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("verify of the damaged laptop (%v) lacks %q:\n%s", err, want, out)
		}
	}
	out = must("verify", "--sysroot", sysroot, "--repair", "--from", repo)
	if !strings.Contains(out, "repaired version 1: usr/bin/tool: object") || !strings.Contains(out, "match their manifests") {
		t.Errorf("verify --repair:\n%s", out)
	}
	if b, err := os.ReadFile(object); string(b) != tool {
		t.Errorf("the lost object after the repair: %q, %v", b, err)
	}
	must("verify", "--sysroot", sysroot)
}
