package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
)

func buildPeerup(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "peerup")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// cli runs the built peerup bin: run gives its output and error, must
// fails the test on an error.
func cli(t *testing.T, bin string) (run func(args ...string) (string, error), must func(args ...string) string) {
	run = func(args ...string) (string, error) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		return string(out), err
	}
	must = func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("peerup %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	return run, must
}

func TestEveryVerbHasHelp(t *testing.T) {
	bin := buildPeerup(t)
	for _, c := range newRoot().Commands() {
		name := c.Name()
		if name == "help" || name == "completion" {
			continue
		}
		out, err := exec.Command(bin, name, "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage:") || !strings.Contains(string(out), "peerup "+name) {
			t.Errorf("peerup %s --help: %v\n%s", name, err, out)
		}
	}
}

func TestErrorsAreOneLineWithNonZeroExit(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	for _, args := range [][]string{
		{"apply", "--sysroot", dir},
		{"rollback", "--sysroot", dir},
		{"pull", "--sysroot", dir, "--trust", dir + "/missing.pub", "--from", "http://127.0.0.1:1/"},
		{"publish", "--repo", dir + "/r", "--image", "Bad Image", "--key", dir + "/k", dir},
		{"nosuchverb"},
		{},
	} {
		cmd := exec.Command(bin, args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil {
			t.Errorf("peerup %v succeeded", args)
			continue
		}
		msg := strings.TrimSuffix(stderr.String(), "\n")
		if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "peerup: ") {
			t.Errorf("peerup %v: stderr is not one clear line:\n%s", args, msg)
		}
	}
}

func TestStatusJSONOnEmptySysroot(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	if _, err := apply.Open(dir); err != nil { // as a first pull leaves it
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "status", "--sysroot", dir, "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, k := range []string{"image", "current", "previous", "staged", "held"} {
		v, ok := got[k]
		if !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null", k, v, ok)
		}
	}
	if bad, ok := got["bad"].([]any); !ok || len(bad) != 0 {
		t.Errorf("bad = %v, want []", got["bad"])
	}
	// An admin's hold shows, and unhold lifts it.
	for _, step := range []struct {
		args []string
		held any
	}{{[]string{"hold", "--sysroot", dir, "4"}, 4.0}, {[]string{"unhold", "--sysroot", dir}, nil}} {
		if out, err := exec.Command(bin, step.args...).CombinedOutput(); err != nil {
			t.Fatalf("peerup %v: %v\n%s", step.args, err, out)
		}
		out, _ := exec.Command(bin, "status", "--sysroot", dir, "--json").Output()
		got = nil
		json.Unmarshal(out, &got)
		if got["held"] != step.held {
			t.Errorf("after peerup %s: held = %v, want %v", step.args[0], got["held"], step.held)
		}
	}
}

// TestMistypedPathsAreRefusedAndNothingIsMade: the verbs that look at or
// tend a sysroot refuse a path that holds none, with one line, and create
// nothing there; serve refuses a folder that is no repo (an OS tree).
func TestMistypedPathsAreRefusedAndNothingIsMade(t *testing.T) {
	bin := buildPeerup(t)
	for _, tc := range []struct {
		args []string // SYSROOT is replaced by the missing path
		want string
	}{
		{[]string{"verify", "--sysroot", "SYSROOT"}, "is not a peerup sysroot"},
		{[]string{"status", "--sysroot", "SYSROOT"}, "is not a peerup sysroot"},
		{[]string{"gc", "--sysroot", "SYSROOT"}, "is not a peerup sysroot"},
		{[]string{"rollback", "--sysroot", "SYSROOT"}, "is not a peerup sysroot"},
		{[]string{"mark-good", "--sysroot", "SYSROOT"}, "is not a peerup sysroot"},
		{[]string{"apply", "--sysroot", "SYSROOT"}, "is not a peerup sysroot"},
		{[]string{"apply-staged", "--sysroot", "SYSROOT", "--policy", "auto", "--apply-on", "shutdown"}, "is not a peerup sysroot"},
		{[]string{"boot", "--sysroot", "SYSROOT"}, "is not a peerup sysroot"},
		{[]string{"serve", "--sysroot", "SYSROOT", "--listen", "127.0.0.1:0"}, "is not a peerup sysroot"},
		{[]string{"serve", "--repo", "SYSROOT", "--listen", "127.0.0.1:0"}, "holds no peerup repo"},
		{[]string{"export", "--sysroot", "SYSROOT", "--to", "TARGET"}, "is not a peerup sysroot"},
	} {
		t.Run(strings.Join(tc.args[:2], " "), func(t *testing.T) {
			base := t.TempDir()
			// An OS tree, as an admin might give by mistake.
			if err := os.MkdirAll(filepath.Join(base, "tree", "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			missing := filepath.Join(base, "nosuch")
			if tc.args[1] == "--repo" {
				missing = filepath.Join(base, "tree")
			}
			args := make([]string, len(tc.args))
			for i, a := range tc.args {
				args[i] = strings.NewReplacer("SYSROOT", missing, "TARGET", filepath.Join(base, "stick")).Replace(a)
			}
			before, _ := exec.Command("find", base).Output()
			cmd := exec.Command(bin, args...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Run(); err == nil {
				t.Fatalf("peerup %v succeeded", args)
			}
			msg := strings.TrimSuffix(stderr.String(), "\n")
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Errorf("stderr %q: want one line saying %q", msg, tc.want)
			}
			if after, _ := exec.Command("find", base).Output(); !bytes.Equal(after, before) {
				t.Errorf("the refused command made:\n%s\nwhere there was:\n%s", after, before)
			}
		})
	}
}

// TestDiffAndPatchInteroperateWithDebian: Debian's bspatch applies what
// `peerup diff` makes, and `peerup patch` applies what Debian's bsdiff makes.
func TestDiffAndPatchInteroperateWithDebian(t *testing.T) {
	for _, tool := range []string{"bsdiff", "bspatch"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install bsdiff)", tool)
		}
	}
	bin := buildPeerup(t)
	dir := t.TempDir()
	old, nw := filepath.Join(dir, "old"), filepath.Join(dir, "new")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(old, data[:len(data)/2], 0o644)
	changed := append([]byte(nil), data[:len(data)/2]...)
	copy(changed[1000:], "a security fix")
	os.WriteFile(nw, append(changed, "and more"...), 0o644)
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	same := func(a, b string) {
		t.Helper()
		x, _ := os.ReadFile(a)
		y, _ := os.ReadFile(b)
		if !bytes.Equal(x, y) {
			t.Fatalf("%s differs from %s", a, b)
		}
	}
	run(bin, "diff", old, nw, dir+"/ours.patch")
	run("bspatch", old, dir+"/out1", dir+"/ours.patch")
	same(dir+"/out1", nw)
	run("bsdiff", old, nw, dir+"/debian.patch")
	run(bin, "patch", old, dir+"/debian.patch", dir+"/out2")
	same(dir+"/out2", nw)
	// A corrupt patch is refused with one line and leaves no output.
	os.WriteFile(dir+"/bad.patch", []byte("BSDIFF40garbage"), 0o644)
	cmd := exec.Command(bin, "patch", old, dir+"/bad.patch", dir+"/out3")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "corrupt patch") {
		t.Fatalf("bad patch: %v %s", err, out)
	}
	if _, err := os.Stat(dir + "/out3"); err == nil {
		t.Fatal("a refused patch left output behind")
	}
}
