package diff

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestFittedLevels: patches between real files are written at the level
// their streams need, so a small patch is charged a fraction of a level-9
// one, and stay plain BSDIFF40 that Debian's bspatch and ours apply.
func TestFittedLevels(t *testing.T) {
	libs, _ := filepath.Glob("/usr/lib/x86_64-linux-gnu/lib*.so.*")
	var files [][]byte
	for _, p := range libs {
		if b, err := os.ReadFile(p); err == nil && len(b) > 20<<10 && len(b) < 400<<10 {
			files = append(files, b)
		}
		if len(files) == 4 {
			break
		}
	}
	if len(files) < 4 {
		t.Skip("fewer than four real libraries to diff")
	}
	tests := []struct {
		name     string
		old, new []byte
	}{
		{"one byte changed", files[0], append(append([]byte{}, files[0][:1000]...), append([]byte{files[0][1000] ^ 1}, files[0][1001:]...)...)},
		{"another library", files[1], files[2]},
		{"grown", files[3][:len(files[3])/2], files[3]},
	}
	_, haveBspatch := exec.LookPath("bspatch")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			patch, err := Make(context.Background(), tc.old, tc.new)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Apply(tc.old, patch, int64(len(tc.new)))
			if err != nil || !bytes.Equal(got, tc.new) {
				t.Fatalf("Apply of a fitted patch: %v", err)
			}
			mem := PatchMemory(bytes.NewReader(patch), int64(len(patch)))
			t.Logf("%d-byte target, %d-byte patch: decode holds %.1f MiB (level 9: %.1f MiB)", len(tc.new), len(patch), float64(mem)/(1<<20), float64(DecodeMemory(KindBsdiff, 0, 0))/(1<<20))
			if mem >= DecodeMemory(KindBsdiff, 0, 0) {
				t.Errorf("a patch of a %d-byte file is charged %d bytes, as much as level 9", len(tc.new), mem)
			}
			if haveBspatch == nil {
				dir := t.TempDir()
				os.WriteFile(dir+"/old", tc.old, 0o644)
				os.WriteFile(dir+"/patch", patch, 0o644)
				if out, err := exec.Command("bspatch", dir+"/old", dir+"/new", dir+"/patch").CombinedOutput(); err != nil {
					t.Fatalf("Debian's bspatch: %v\n%s", err, out)
				}
				if b, _ := os.ReadFile(dir + "/new"); !bytes.Equal(b, tc.new) {
					t.Fatal("Debian's bspatch made something else")
				}
			}
		})
	}
	if got := PatchMemory(bytes.NewReader([]byte("not a patch")), 11); got != DecodeMemory(KindBsdiff, 0, 0) {
		t.Errorf("an unreadable patch is charged %d, want the level-9 bound", got)
	}
}
