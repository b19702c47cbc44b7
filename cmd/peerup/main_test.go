package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func buildPeerup(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "peerup")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
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
	out, err := exec.Command(bin, "status", "--sysroot", t.TempDir(), "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, k := range []string{"image", "current", "previous", "staged"} {
		v, ok := got[k]
		if !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null", k, v, ok)
		}
	}
}
