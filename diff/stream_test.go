package diff

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/gabstv/go-bsdiff/pkg/bspatch"
)

// legacyApply is the in-memory path the streaming applier replaced:
// go-bsdiff's bspatch, which the laptop ran until issue 14. Only patches the
// new applier accepted reach it, so its missing checks do not matter here;
// recover covers what else it does.
func legacyApply(old, patch []byte) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, ErrCorruptPatch
		}
	}()
	return bspatch.Bytes(old, patch)
}

// TestRealPatchesMatchDebianAndLegacy: patches that go-bsdiff makes between
// real shared libraries decode, through files and ReadAt, to exactly what
// Debian's bspatch makes of them and what the old in-memory path made.
func TestRealPatchesMatchDebianAndLegacy(t *testing.T) {
	bspatchTool := tool(t, "bspatch")
	lib := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("/usr/lib/x86_64-linux-gnu", name))
		if err != nil {
			t.Skipf("no %s: %v", name, err)
		}
		return b
	}
	// scattered is a security-fix-like edit: a few bytes changed in several
	// places and a short run inserted.
	scattered := func(b []byte) []byte {
		b = bytes.Clone(b)
		for i := 1; i < 8; i++ {
			copy(b[i*len(b)/8:], "CVE-2026-0001")
		}
		mid := len(b) / 2
		return append(append(b[:mid:mid], make([]byte, 300)...), b[mid:]...)
	}
	tests := []struct {
		name     string
		old, new func() []byte
	}{
		{"libz edited", func() []byte { return lib("libz.so.1") }, func() []byte { return scattered(lib("libz.so.1")) }},
		{"libbz2 to libz", func() []byte { return lib("libbz2.so.1.0") }, func() []byte { return lib("libz.so.1") }},
		{"libzstd edited", func() []byte { return lib("libzstd.so.1") }, func() []byte { return scattered(lib("libzstd.so.1")) }},
		{"libpcre2 truncated", func() []byte { return lib("libpcre2-8.so.0") }, func() []byte { return lib("libpcre2-8.so.0")[:400_000] }},
		{"libc edited", func() []byte { return lib("libc.so.6") }, func() []byte { return scattered(lib("libc.so.6")) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old, nw := tc.old(), tc.new()
			patch, err := Make(t.Context(), old, nw)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			writeFiles(t, dir, map[string][]byte{"old": old, "patch": patch})
			oldPath, patchPath := filepath.Join(dir, "old"), filepath.Join(dir, "patch")

			debian := filepath.Join(dir, "debian")
			if b, err := exec.Command(bspatchTool, oldPath, debian, patchPath).CombinedOutput(); err != nil {
				t.Fatalf("Debian's bspatch: %v\n%s", err, b)
			}
			sameFile(t, debian, nw)

			of, err := os.Open(oldPath)
			if err != nil {
				t.Fatal(err)
			}
			defer of.Close()
			pf, err := os.Open(patchPath)
			if err != nil {
				t.Fatal(err)
			}
			defer pf.Close()
			var streamed bytes.Buffer
			if err := Patch(t.Context(), of, int64(len(old)), pf, int64(len(patch)), int64(len(nw)), &streamed); err != nil {
				t.Fatalf("Patch: %v", err)
			}
			if !bytes.Equal(streamed.Bytes(), nw) {
				t.Fatalf("Patch gives %d bytes that differ from Debian's %d", streamed.Len(), len(nw))
			}
			legacy, err := legacyApply(old, patch)
			if err != nil || !bytes.Equal(legacy, streamed.Bytes()) {
				t.Fatalf("the old in-memory path gives something else: %v", err)
			}
			t.Logf("%d → %d bytes, patch %d", len(old), len(nw), len(patch))
		})
	}
}

// TestDecodeToStopsWithItsContext: a cancelled decode ends with the
// context's error, not a corrupt-encoding one the caller would log as such.
func TestDecodeToStopsWithItsContext(t *testing.T) {
	old := pseudoRandom(1<<20, 21)
	nw := append(bytes.Clone(old[1000:]), "tail"...)
	patch, err := Make(t.Context(), old, nw)
	if err != nil {
		t.Fatal(err)
	}
	zst, err := EncodeZstd(nw)
	if err != nil {
		t.Fatal(err)
	}
	sec := func(b []byte) *io.SectionReader { return io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))) }
	d := NewDecoder()
	defer d.Close()
	for _, tc := range []struct {
		kind Kind
		base *io.SectionReader
		enc  []byte
	}{
		{KindBsdiff, sec(old), patch},
		{KindZstd, nil, zst},
	} {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := d.DecodeTo(ctx, tc.kind, tc.base, sec(tc.enc), int64(len(nw)), io.Discard); err == nil || ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
			t.Errorf("%s: err = %v, want the context's", tc.kind, err)
		}
	}
}
