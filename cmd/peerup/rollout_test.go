package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerup/peerup/blobstore"
)

// TestRolloutFromTheCommandLine: v2 is published to 20% of machines. A
// laptop whose machine id is in that fifth updates to it; one outside is
// told it is not rolled out there yet and stays on v1 with v2 staged,
// unless its admin passes --ignore-rollout. 'peerup rollout 2 100', signed
// by the fleet key and by no other, brings it without a new publish.
func TestRolloutFromTheCommandLine(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	run, must := cli(t, bin)
	must("keygen", "--name", "fleet", "--out", dir+"/keys")
	must("keygen", "--name", "other", "--out", dir+"/keys")
	tree, repo := dir+"/tree", dir+"/repo"
	pub := dir + "/keys/fleet.pub"
	// Machine ids placed in and out of v2's first 20%.
	var in, out []string
	for i := 0; len(in) < 1 || len(out) < 2; i++ {
		id := fmt.Sprintf("%032x", i)
		if blobstore.InRollout(blobstore.RolloutBucket(id, "school-laptop", 2), 20) {
			in = append(in, id)
		} else {
			out = append(out, id)
		}
	}
	laptop := func(name, id string) (sysroot, idFile string) {
		idFile = filepath.Join(dir, name+".machine-id")
		os.WriteFile(idFile, []byte(id+"\n"), 0o644)
		return filepath.Join(dir, name), idFile
	}
	type machine struct{ sysroot, idFile string }
	var inside, outside, admin machine
	inside.sysroot, inside.idFile = laptop("inside", in[0])
	outside.sysroot, outside.idFile = laptop("outside", out[0])
	admin.sysroot, admin.idFile = laptop("admin", out[1])
	update := func(m machine, extra ...string) (string, error) {
		return run(append([]string{"update", "--sysroot", m.sysroot, "--trust", pub, "--from", repo, "--machine-id", m.idFile}, extra...)...)
	}
	current := func(m machine) string {
		b, _ := os.ReadFile(filepath.Join(m.sysroot, "current/etc/os-release"))
		return strings.TrimSpace(string(b))
	}
	os.MkdirAll(tree+"/etc", 0o755)
	os.WriteFile(tree+"/etc/os-release", []byte("VERSION_ID=1\n"), 0o644)
	must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/fleet.key", tree)
	for _, m := range []machine{inside, outside, admin} {
		if out, err := update(m); err != nil {
			t.Fatalf("update to v1: %v\n%s", err, out)
		}
	}
	os.WriteFile(tree+"/etc/os-release", []byte("VERSION_ID=2\n"), 0o644)
	if out, err := run("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/fleet.key", "--rollout", "150", tree); err == nil {
		t.Errorf("publish --rollout 150 succeeded:\n%s", out)
	}
	if got := must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/fleet.key", "--rollout", "20", tree); !strings.Contains(got, "rolled out to 20% of machines") {
		t.Errorf("publish --rollout 20 said %q", got)
	}

	if out, err := update(inside); err != nil || current(inside) != "VERSION_ID=2" {
		t.Errorf("the laptop inside the 20%%: %v, runs %q\n%s", err, current(inside), out)
	}
	got, err := update(outside)
	if err != nil || !strings.Contains(got, "not yet rolled out to this machine") || current(outside) != "VERSION_ID=1" {
		t.Errorf("the laptop outside the 20%%: %v, runs %q\n%s", err, current(outside), got)
	}
	if st := must("status", "--sysroot", outside.sysroot); !strings.Contains(st, "staged:   2") {
		t.Errorf("outside the rollout v2 is not staged:\n%s", st)
	}
	if out, err := update(admin, "--ignore-rollout"); err != nil || current(admin) != "VERSION_ID=2" {
		t.Errorf("--ignore-rollout: %v, runs %q\n%s", err, current(admin), out)
	}

	for _, args := range [][]string{
		{"--key", dir + "/keys/other.key", "2", "100"}, // not a fleet key
		{"--key", dir + "/keys/fleet.key", "3", "100"}, // not published
		{"--key", dir + "/keys/fleet.key", "2", "101"},
	} {
		if out, err := run(append([]string{"rollout", "--repo", repo, "--image", "school-laptop"}, args...)...); err == nil {
			t.Errorf("rollout %v succeeded:\n%s", args, out)
		}
	}
	if got := must("rollout", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/fleet.key", "2", "100%"); !strings.Contains(got, "version 2 goes to 100% of machines") {
		t.Errorf("rollout said %q", got)
	}
	if out, err := update(outside); err != nil || current(outside) != "VERSION_ID=2" {
		t.Errorf("at 100%% the laptop outside the first fifth: %v, runs %q\n%s", err, current(outside), out)
	}
}
