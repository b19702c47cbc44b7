package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportAndUpdateFromAFolder: a school without a network link. The
// publisher writes v1 to one stick and v3 to two more at once (a third
// folder is unsuitable and fails alone, with a non-zero exit); a laptop is
// installed from the first and updated from each of the others, by the
// CLI alone.
func TestExportAndUpdateFromAFolder(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	run := func(wantOK bool, args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if (err == nil) != wantOK {
			t.Fatalf("peerup %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	run(true, "keygen", "--name", "fleet", "--out", dir)
	tree, repo := filepath.Join(dir, "tree"), filepath.Join(dir, "repo")
	for v, lib := range []string{"first", "second", "third"} {
		os.MkdirAll(tree+"/usr/lib", 0o755)
		os.WriteFile(tree+"/etc-release", []byte(lib+"\n"), 0o644)
		os.WriteFile(tree+"/usr/lib/libschool.so", []byte(strings.Repeat("library code "+lib+" ", 20000)), 0o755)
		run(true, "publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/fleet.key", "--version", string(rune('1'+v)), tree)
	}
	stick1 := filepath.Join(dir, "stick1")
	a, b, photos := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "photos")
	os.MkdirAll(photos+"/objects", 0o755)
	run(true, "export", "--repo", repo, "--version", "1", "--to", stick1, "--trust", dir+"/fleet.pub")
	out, errOut := run(false, "export", "--repo", repo, "--to", a, "--to", photos, "--to", b)
	for _, want := range []string{"exported school-laptop version 3 to " + a, "exported school-laptop version 3 to " + b} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{"peerup: export to " + photos + ": ", "export failed on 1 of 3 targets"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}

	for _, stick := range []string{a, b} {
		sysroot := filepath.Join(t.TempDir(), "sysroot")
		run(true, "update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", stick1)
		out, _ := run(true, "update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", stick)
		if !strings.Contains(out, "current is now version 3 (previous: 1)") {
			t.Errorf("update from %s: %s", stick, out)
		}
		js, _ := run(true, "status", "--sysroot", sysroot, "--json")
		var st map[string]any
		json.Unmarshal([]byte(js), &st)
		if st["current"] != float64(3) {
			t.Errorf("status after the update from %s: %s", stick, js)
		}
		got, _ := os.ReadFile(filepath.Join(sysroot, "current", "etc-release"))
		if string(got) != "third\n" {
			t.Errorf("current/etc-release = %q", got)
		}
	}
	// A folder with no repo in it is named as such.
	_, errOut = run(false, "update", "--sysroot", filepath.Join(dir, "s"), "--trust", dir+"/fleet.pub", "--from", photos)
	if !strings.Contains(errOut, photos+" holds no peerup repo") {
		t.Errorf("update from an empty folder: %s", errOut)
	}
}

// TestCatchUpStickByTheCLI: the black-box case. An 11 MiB library's
// cheapest encoding is a zstd-dict against v2's, which a laptop's default
// memory budget cannot decode; `export --from-version 2` must put a way on
// the stick that the v2 laptop takes, read as a folder and served by
// `peerup serve` on the stick.
func TestCatchUpStickByTheCLI(t *testing.T) {
	bin := buildPeerup(t)
	dir := t.TempDir()
	_, must := cli(t, bin)
	must("keygen", "--name", "fleet", "--out", dir)
	tree, repo, stick := dir+"/tree", dir+"/repo", dir+"/stick"
	lib := []byte(strings.Repeat("machine code of a large library; ", 11<<20/33))
	for _, v := range []string{"1", "2", "3"} {
		os.MkdirAll(tree+"/usr/lib", 0o755)
		os.WriteFile(tree+"/etc-release", []byte(v+"\n"), 0o644)
		copy(lib[7919*int(v[0]-'0'):], "[fix "+v+"]")
		os.WriteFile(tree+"/usr/lib/libbig.so", lib, 0o755)
		must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/fleet.key", "--version", v, tree)
	}
	must("export", "--repo", repo, "--from-version", "2", "--to", stick)

	srv := exec.Command(bin, "serve", "--repo", stick, "--listen", "127.0.0.1:0")
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	_, url, ok := strings.Cut(strings.TrimSpace(line), " on ")
	if err != nil || !ok {
		t.Fatalf("serve said %q, %v", line, err)
	}
	for _, from := range []string{stick, url} {
		sysroot := filepath.Join(t.TempDir(), "sysroot")
		must("update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", repo, "--version", "2")
		if out := must("update", "--sysroot", sysroot, "--trust", dir+"/fleet.pub", "--from", from); !strings.Contains(out, "current is now version 3 (previous: 2)") {
			t.Errorf("update from %s: %s", from, out)
		}
		if got, _ := os.ReadFile(filepath.Join(sysroot, "current/usr/lib/libbig.so")); !bytes.Equal(got, lib) {
			t.Errorf("update from %s: the library is not v3's", from)
		}
	}
}
