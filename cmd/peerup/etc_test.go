package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUpdateSaysWhichEtcEditsItKept: an /etc file both the node and the
// new image changed keeps the node's version, and update says so on stderr.
func TestUpdateSaysWhichEtcEditsItKept(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	run := func(args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("peerup %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	run("keygen", "--name", "fleet", "--out", dir)
	tree, repo, sysroot := filepath.Join(dir, "tree"), filepath.Join(dir, "repo"), filepath.Join(dir, "sysroot")
	os.MkdirAll(tree+"/etc", 0o755)
	publish := func(v, motd string) {
		os.WriteFile(tree+"/etc/motd", []byte(motd), 0o644)
		os.WriteFile(tree+"/etc/os-release", []byte("VERSION="+v+"\n"), 0o644)
		run("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/fleet.key", "--version", v, tree)
	}
	publish("1", "welcome\n")
	run("update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", repo)
	os.WriteFile(sysroot+"/current/etc/motd", []byte("our school\n"), 0o644)
	publish("2", "welcome to v2\n")
	_, stderr := run("update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", repo)
	if want := "kept local /etc/motd; the image's new version was not applied\n"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if got, _ := os.ReadFile(sysroot + "/current/etc/motd"); string(got) != "our school\n" {
		t.Errorf("current/etc/motd = %q", got)
	}
	if got, _ := os.ReadFile(sysroot + "/current/etc/os-release"); string(got) != "VERSION=2\n" {
		t.Errorf("current/etc/os-release = %q", got)
	}
}
