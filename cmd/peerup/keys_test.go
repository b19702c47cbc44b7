package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeyRotationFromTheCommandLine follows SPEC.md §17's procedure as an
// admin types it: laptops trust only the old key; a version signed by it
// ships the new key and names it with --add-key; once a laptop runs that
// version it takes versions signed by the new key; a version with
// --revoke-key retires the old key, after which a version the old key
// signs is refused and changes nothing.
func TestKeyRotationFromTheCommandLine(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	run, must := cli(t, bin)
	fingerprint := func(keygenOut string) string {
		for _, line := range strings.Split(keygenOut, "\n") {
			if f, ok := strings.CutPrefix(line, "fingerprint: "); ok {
				return strings.TrimSpace(f)
			}
		}
		t.Fatalf("keygen printed no fingerprint:\n%s", keygenOut)
		return ""
	}
	oldFpr := fingerprint(must("keygen", "--name", "old", "--out", dir+"/keys"))
	newFpr := fingerprint(must("keygen", "--name", "new", "--out", dir+"/keys"))
	tree, repo, sysroot := dir+"/tree", dir+"/repo", dir+"/laptop"
	release := func(v string) {
		os.MkdirAll(tree+"/etc", 0o755)
		os.WriteFile(tree+"/etc/os-release", []byte("VERSION_ID="+v+"\n"), 0o644)
	}
	publish := func(key string, extra ...string) {
		t.Helper()
		must(append(append([]string{"publish", "--repo", repo, "--image", "school-laptop", "--key", dir + "/keys/" + key + ".key"}, extra...), tree)...)
	}
	update := func() (string, error) {
		return run("update", "--sysroot", sysroot, "--trust", dir+"/keys/old.pub", "--from", repo)
	}
	current := func() string {
		b, _ := os.ReadFile(filepath.Join(sysroot, "current/etc/os-release"))
		return strings.TrimSpace(string(b))
	}

	release("1")
	publish("old")
	if out, err := update(); err != nil {
		t.Fatalf("v1: %v\n%s", err, out)
	}
	// v2, signed by the old key, introduces the new one.
	release("2")
	os.MkdirAll(tree+"/etc/peerup/trusted.d", 0o755)
	pub, _ := os.ReadFile(dir + "/keys/new.pub")
	os.WriteFile(tree+"/etc/peerup/trusted.d/new.pub", pub, 0o644)
	publish("old", "--add-key", newFpr)
	if out, err := update(); err != nil {
		t.Fatalf("v2: %v\n%s", err, out)
	}
	// v3 is signed by the new key only, and revokes the old one.
	release("3")
	publish("new", "--revoke-key", oldFpr)
	if out, err := update(); err != nil {
		t.Fatalf("v3 signed by the introduced key: %v\n%s", err, out)
	}
	if got := current(); got != "VERSION_ID=3" {
		t.Fatalf("after v3: os-release %q", got)
	}
	// A v4 signed by the revoked key, though still given with --trust: the
	// repo refuses to publish it, and a laptop refuses it where a thief's
	// repo (or --any-key) lets it through.
	release("4")
	if out, err := run("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/old.key", tree); err == nil || !strings.Contains(out, "not one this fleet trusts") {
		t.Fatalf("publish with the revoked key: %v\n%s", err, out)
	}
	publish("old", "--any-key")
	out, err := update()
	if err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("v4 signed by the revoked key: err = %v\n%s", err, out)
	}
	if got := current(); got != "VERSION_ID=3" {
		t.Errorf("after the refused v4: os-release %q, want v3 still", got)
	}
}
