package diff

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pseudoRandom is incompressible data that is the same on every run.
func pseudoRandom(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

type filePair struct {
	name     string
	old, new []byte
}

// pairs are the old and new files the round-trip and interop tests use:
// edge cases, and a real program with a security-fix-sized change.
func pairs(t *testing.T) []filePair {
	t.Helper()
	base := pseudoRandom(100_000, 1)
	edited := bytes.Clone(base)
	copy(edited[5000:], "a security fix")
	copy(edited[70000:], "another one")
	ps := []filePair{
		{"empty old", nil, []byte("brand new file")},
		{"empty new", base[:1000], nil},
		{"both empty", nil, nil},
		{"identical", base, base},
		{"edited", base, edited},
		{"appended", base, append(bytes.Clone(base), "tail"...)},
		{"truncated", base, base[:60_000]},
		{"unrelated", base[:5000], pseudoRandom(6000, 2)},
		{"repetitive", bytes.Repeat([]byte("ab"), 5000), bytes.Repeat([]byte("abc"), 4000)},
		{"single bytes", []byte{1}, []byte{2}},
	}
	if gofmt, err := os.ReadFile("/usr/local/go/bin/gofmt"); err == nil {
		mod := bytes.Clone(gofmt)
		copy(mod[len(mod)/2:], "patched in the middle")
		mod = append(mod[:len(mod)/3], mod[len(mod)/3+4096:]...) // a function removed
		ps = append(ps, filePair{"real binary (gofmt)", gofmt, mod})
	} else {
		t.Logf("no /usr/local/go/bin/gofmt; the real-binary pair is left out")
	}
	return ps
}

func TestRoundTrip(t *testing.T) {
	for _, p := range pairs(t) {
		t.Run(p.name, func(t *testing.T) {
			patch, err := Make(t.Context(), p.old, p.new)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Apply(p.old, patch, int64(len(p.new)))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, p.new) {
				t.Fatalf("Apply(Make(old, new)) gives %d bytes that differ from new's %d", len(got), len(p.new))
			}
			if len(p.new) > 10_000 && bytes.Equal(p.old, p.new) && len(patch) > 1000 {
				t.Errorf("patch between identical files is %d bytes", len(patch))
			}
		})
	}
}

func TestMakeStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Make(ctx, pseudoRandom(1<<20, 3), pseudoRandom(1<<20, 4)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled before the start: err = %v, want context.Canceled", err)
	}
	// Half a MiB of zeros against itself takes the library about a second
	// (runs of equal bytes make it quadratic); Make must not wait for it.
	zeros := make([]byte, 512<<10)
	changed := bytes.Clone(zeros)
	changed[len(changed)/2] = 1
	ctx, cancel = context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if _, err := Make(ctx, zeros, changed); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline during the diff: err = %v, want context.DeadlineExceeded", err)
	}
}

// A patch nobody would apply is refused before the files are read.
func TestMakeFilesRefusesOversizedNew(t *testing.T) {
	dir := t.TempDir()
	huge := filepath.Join(dir, "huge")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxPatchOutput + 1); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	f.Close()
	err = MakeFiles(t.Context(), huge, huge, filepath.Join(dir, "p"))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "p")); err == nil {
		t.Fatal("a refused diff left a patch behind")
	}
}

func TestMemoryNeeded(t *testing.T) {
	for _, n := range []int64{0, 1 << 20, 100 << 20} {
		if got := MemoryNeeded(n); got < 20*n || got > 20*n+(16<<20) {
			t.Errorf("MemoryNeeded(%d) = %d, want about 20× old", n, got)
		}
	}
}

// tool finds one of Debian's bsdiff tools or skips the test.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not in PATH (apt-get install bsdiff): skipping interop with Debian's bsdiff 4.3", name)
	}
	return p
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func sameFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes that differ from the expected %d", filepath.Base(path), len(got), len(want))
	}
}

func TestDebianBspatchAppliesOurPatches(t *testing.T) {
	bspatch := tool(t, "bspatch")
	for _, p := range pairs(t) {
		t.Run(p.name, func(t *testing.T) {
			if len(p.new) == 0 {
				t.Skip("Debian's bspatch cannot make an empty file (malloc(0) fails)")
			}
			dir := t.TempDir()
			writeFiles(t, dir, map[string][]byte{"old": p.old, "new": p.new})
			old, patch, out := filepath.Join(dir, "old"), filepath.Join(dir, "patch"), filepath.Join(dir, "out")
			if err := MakeFiles(t.Context(), old, filepath.Join(dir, "new"), patch); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(bspatch, old, out, patch).CombinedOutput(); err != nil {
				t.Fatalf("bspatch: %v\n%s", err, b)
			}
			sameFile(t, out, p.new)
		})
	}
}

func TestWeApplyDebianBsdiffPatches(t *testing.T) {
	bsdiff := tool(t, "bsdiff")
	for _, p := range pairs(t) {
		t.Run(p.name, func(t *testing.T) {
			if len(p.old) == 0 || len(p.new) == 0 {
				t.Skip("Debian's bsdiff cannot read an empty file (malloc(0) fails)")
			}
			dir := t.TempDir()
			writeFiles(t, dir, map[string][]byte{"old": p.old, "new": p.new})
			old, patch, out := filepath.Join(dir, "old"), filepath.Join(dir, "patch"), filepath.Join(dir, "out")
			if b, err := exec.Command(bsdiff, old, filepath.Join(dir, "new"), patch).CombinedOutput(); err != nil {
				t.Fatalf("bsdiff: %v\n%s", err, b)
			}
			if err := ApplyFiles(old, patch, out); err != nil {
				t.Fatal(err)
			}
			sameFile(t, out, p.new)
			// And in memory, with the size a manifest would declare.
			pb, err := os.ReadFile(patch)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Apply(p.old, pb, int64(len(p.new)))
			if err != nil || !bytes.Equal(got, p.new) {
				t.Fatalf("Apply: %v (equal: %v)", err, bytes.Equal(got, p.new))
			}
		})
	}
}

// entries lists a directory, to show that failures leave no temporary
// files behind.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestApplyFiles(t *testing.T) {
	old := pseudoRandom(50_000, 11)
	nw := append(bytes.Clone(old[:30_000]), "new code"...)
	patch, err := Make(t.Context(), old, nw)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{"old": old, "patch": patch, "bad": patch[:len(patch)/2], "existing": []byte("keep me")})
	oldPath := filepath.Join(dir, "old")
	if err := os.Chmod(oldPath, 0o755); err != nil {
		t.Fatal(err)
	}

	t.Run("writes new with old's mode", func(t *testing.T) {
		out := filepath.Join(dir, "out")
		if err := ApplyFiles(oldPath, filepath.Join(dir, "patch"), out); err != nil {
			t.Fatal(err)
		}
		sameFile(t, out, nw)
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o755 {
			t.Fatalf("mode %v, %v; want 0755 like the old file", fi.Mode(), err)
		}
	})
	t.Run("a refused patch leaves nothing behind", func(t *testing.T) {
		before := entries(t, dir)
		err := ApplyFiles(oldPath, filepath.Join(dir, "bad"), filepath.Join(dir, "existing"))
		if !errors.Is(err, ErrCorruptPatch) {
			t.Fatalf("err = %v, want ErrCorruptPatch", err)
		}
		if !strings.Contains(err.Error(), "bad") {
			t.Errorf("error %q does not name the patch file", err)
		}
		sameFile(t, filepath.Join(dir, "existing"), []byte("keep me"))
		if after := entries(t, dir); strings.Join(after, " ") != strings.Join(before, " ") {
			t.Fatalf("directory changed from %v to %v", before, after)
		}
	})
	t.Run("missing files are named", func(t *testing.T) {
		err := ApplyFiles(filepath.Join(dir, "nope"), filepath.Join(dir, "patch"), filepath.Join(dir, "out2"))
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("err = %v", err)
		}
		err = MakeFiles(t.Context(), oldPath, filepath.Join(dir, "nope"), filepath.Join(dir, "p2"))
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("err = %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "p2")); err == nil {
			t.Fatal("a failed diff left a patch behind")
		}
	})
	t.Run("header size over the limit", func(t *testing.T) {
		big := bytes.Clone(patch)
		copy(big[24:], offtout(MaxPatchOutput+1))
		writeFiles(t, dir, map[string][]byte{"big": big})
		err := ApplyFiles(oldPath, filepath.Join(dir, "big"), filepath.Join(dir, "out3"))
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
	})
}
