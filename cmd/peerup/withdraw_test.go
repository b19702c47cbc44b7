package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWithdrawFromTheCommandLine: an admin publishes a bad v3 and withdraws
// it; a laptop's update takes v2, and asking for v3 by name is refused and
// changes nothing. A key the fleet does not trust cannot withdraw.
func TestWithdrawFromTheCommandLine(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	run, must := cli(t, bin)
	must("keygen", "--name", "fleet", "--out", dir+"/keys")
	must("keygen", "--name", "other", "--out", dir+"/keys")
	tree, repo, sysroot := dir+"/tree", dir+"/repo", dir+"/laptop"
	for _, v := range []string{"1", "2", "3"} {
		os.MkdirAll(tree+"/etc", 0o755)
		os.WriteFile(tree+"/etc/os-release", []byte("VERSION_ID="+v+"\n"), 0o644)
		must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/fleet.key", tree)
		if v == "1" {
			must("update", "--sysroot", sysroot, "--trust", dir+"/keys/fleet.pub", "--from", repo)
		}
	}
	if out, err := run("withdraw", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/other.key", "3"); err == nil {
		t.Errorf("a key the fleet does not trust withdrew v3:\n%s", out)
	}
	out := must("withdraw", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/fleet.key", "3")
	if !strings.Contains(out, "withdrew school-laptop version 3") {
		t.Errorf("withdraw said %q", out)
	}
	current := func() string {
		b, _ := os.ReadFile(filepath.Join(sysroot, "current/etc/os-release"))
		return strings.TrimSpace(string(b))
	}
	if out, err := run("update", "--sysroot", sysroot, "--trust", dir+"/keys/fleet.pub", "--from", repo, "--version", "3"); err == nil || !strings.Contains(out, "withdrawn by its publisher") {
		t.Errorf("update to withdrawn v3: %v\n%s", err, out)
	}
	if got := current(); got != "VERSION_ID=1" {
		t.Errorf("after the refused update the laptop runs %q", got)
	}
	must("update", "--sysroot", sysroot, "--trust", dir+"/keys/fleet.pub", "--from", repo)
	if got := current(); got != "VERSION_ID=2" {
		t.Errorf("update with v3 withdrawn: the laptop runs %q, want v2", got)
	}
}
