package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/crashpoint"
	"github.com/peerup/peerup/internal/testfs"
)

// TestStatusAndRollbackAfterAnInterruptedRollback: a rollback killed
// between its two renames (current already names v1, previous still v1,
// the journal says "1 2"). status and status --json report the state the
// journal will produce, with the switch pending; a second rollback
// finishes the first and says so, rather than swapping back; a third
// changes nothing and says so. Then, on a full disk, apply fails saying
// nothing was switched and what is current, leaves no journal, and works
// once there is room.
func TestStatusAndRollbackAfterAnInterruptedRollback(t *testing.T) {
	small := testfs.Tmpfs(t, "size=32m,nr_inodes=2000")
	bin := buildPeerup(t)
	dir := t.TempDir()
	run, must := cli(t, bin)
	must("keygen", "--name", "fleet", "--out", dir)
	tree, repo, sysroot := dir+"/tree", dir+"/repo", filepath.Join(small, "sysroot")
	for _, v := range []string{"1", "2", "3"} {
		os.MkdirAll(tree+"/etc", 0o755)
		os.WriteFile(tree+"/etc/os-release", []byte("VERSION_ID="+v+"\n"), 0o644)
		must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/fleet.key", "--version", v, tree)
	}
	for _, v := range []string{"1", "2"} {
		must("update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", repo, "--version", v)
	}

	// The kill, in process: the rollback stops before its second rename.
	s, err := apply.Open(sysroot)
	if err != nil {
		t.Fatal(err)
	}
	crashpoint.Stop(t, s, "rename previous", func() { s.Rollback() })
	if l, _ := os.Readlink(sysroot + "/previous"); l != "trees/1" {
		t.Fatalf("previous link %q: the rollback was not stopped between its renames", l)
	}

	out := must("status", "--sysroot", sysroot)
	for _, want := range []string{"current:  1\n", "previous: 2\n", "switch:   pending: the rollback to version 1 was interrupted"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var doc statusDoc
	if err := json.Unmarshal([]byte(must("status", "--sysroot", sysroot, "--json")), &doc); err != nil {
		t.Fatal(err)
	}
	if *doc.Current != 1 || *doc.Previous != 2 || doc.Pending == nil || doc.Pending.Kind != "rollback" || doc.Pending.Current != 1 || *doc.Pending.Previous != 2 {
		t.Errorf("status --json: %+v, pending %+v", doc, doc.Pending)
	}

	steps := []struct{ say, status string }{
		{"finished the interrupted rollback: current is now version 1 (previous: 2)", "current:  1\nprevious: 2\n"},
		{"already rolled back, nothing changed: current is version 1 (previous: 2)", "current:  1\nprevious: 2\n"},
	}
	for _, st := range steps {
		if out := must("rollback", "--sysroot", sysroot); !strings.Contains(out, st.say) {
			t.Errorf("rollback said %q, want %q", out, st.say)
		}
		if out := must("status", "--sysroot", sysroot); !strings.Contains(out, st.status) || strings.Contains(out, "pending") {
			t.Errorf("status after the rollback:\n%s", out)
		}
	}

	// A full disk at apply: nothing switched, and it says so.
	must("pull", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", repo, "--version", "3")
	filler := filepath.Join(small, "filler")
	os.Mkdir(filler, 0o700)
	testfs.Fill(t, filler)
	out, err = run("apply", "--sysroot", sysroot)
	if err == nil || !strings.Contains(out, "not switched: current is still version 1 (previous: 2), version 3 staged") || !strings.Contains(out, "no space left on device") {
		t.Errorf("apply on a full disk: %v\n%s", err, out)
	}
	os.RemoveAll(filler)
	if _, err := os.Stat(sysroot + "/peerup/switch"); err == nil {
		t.Error("the failed apply left a switch journal")
	}
	if out := must("status", "--sysroot", sysroot); !strings.Contains(out, "current:  1\nprevious: 2\nstaged:   3\n") || strings.Contains(out, "pending") {
		t.Errorf("status after the failed apply:\n%s", out)
	}
	if out := must("apply", "--sysroot", sysroot); !strings.Contains(out, "current is now version 3 (previous: 1)") {
		t.Errorf("apply with room: %s", out)
	}
}
