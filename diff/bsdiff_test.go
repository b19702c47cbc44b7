package diff

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/gabstv/go-bsdiff/pkg/bspatch"
)

func pseudoRandom(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func pairs(t *testing.T) map[string][2][]byte {
	t.Helper()
	base := pseudoRandom(100000, 1)
	edited := append([]byte(nil), base...)
	copy(edited[5000:], "a security fix")
	copy(edited[70000:], "another one")
	out := map[string][2][]byte{
		"empty old":    {nil, []byte("brand new file")},
		"empty new":    {base[:1000], nil},
		"identical":    {base, base},
		"edited":       {base, edited},
		"appended":     {base, append(append([]byte(nil), base...), "tail"...)},
		"unrelated":    {base[:5000], pseudoRandom(6000, 2)},
		"repetitive":   {bytes.Repeat([]byte("ab"), 5000), bytes.Repeat([]byte("abc"), 4000)},
		"single bytes": {[]byte{1}, []byte{2}},
	}
	if gofmt, err := os.ReadFile("/usr/local/go/bin/gofmt"); err == nil {
		mod := append([]byte(nil), gofmt...)
		copy(mod[len(mod)/2:], "patched in the middle")
		out["real binary"] = [2][]byte{gofmt, mod}
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	for name, p := range pairs(t) {
		t.Run(name, func(t *testing.T) {
			patch, err := Make(context.Background(), p[0], p[1])
			if err != nil {
				t.Fatal(err)
			}
			got, err := Apply(p[0], patch, int64(len(p[1])))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, p[1]) {
				t.Fatal("round trip differs")
			}
		})
	}
}

func TestMakeHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Make(ctx, pseudoRandom(1<<20, 3), pseudoRandom(1<<20, 4)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install bsdiff); skipping interop with Debian's bsdiff", name)
	}
	return p
}

func TestDebianBspatchAppliesOurPatches(t *testing.T) {
	bspatch := tool(t, "bspatch")
	for name, p := range pairs(t) {
		if len(p[1]) == 0 {
			continue // Debian's bspatch refuses to write an empty file
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			old, nw, patch, out := filepath.Join(dir, "old"), filepath.Join(dir, "new"), filepath.Join(dir, "patch"), filepath.Join(dir, "out")
			os.WriteFile(old, p[0], 0o644)
			os.WriteFile(nw, p[1], 0o644)
			if err := MakeFiles(context.Background(), old, nw, patch); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(bspatch, old, out, patch).CombinedOutput(); err != nil {
				t.Fatalf("bspatch: %v\n%s", err, b)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, p[1]) {
				t.Fatal("Debian's bspatch output differs from NEW")
			}
		})
	}
}

func TestWeApplyDebianBsdiffPatches(t *testing.T) {
	bsdiffBin := tool(t, "bsdiff")
	for name, p := range pairs(t) {
		if len(p[0]) == 0 || len(p[1]) == 0 {
			continue // Debian's bsdiff cannot mmap empty files
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			old, nw, patch, out := filepath.Join(dir, "old"), filepath.Join(dir, "new"), filepath.Join(dir, "patch"), filepath.Join(dir, "out")
			os.WriteFile(old, p[0], 0o644)
			os.WriteFile(nw, p[1], 0o644)
			if b, err := exec.Command(bsdiffBin, old, nw, patch).CombinedOutput(); err != nil {
				t.Fatalf("bsdiff: %v\n%s", err, b)
			}
			if err := ApplyFiles(old, patch, out); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, p[1]) {
				t.Fatal("our output differs from NEW")
			}
		})
	}
}

func offtout(v int64) []byte {
	b := make([]byte, 8)
	if v < 0 {
		binary.LittleEndian.PutUint64(b, uint64(-v))
		b[7] |= 0x80
	} else {
		binary.LittleEndian.PutUint64(b, uint64(v))
	}
	return b
}

// craft builds a patch with the given header fields and control triples,
// with valid bzip2 streams, the way an attacker would.
func craft(t testing.TB, newSize int64, triples [][3]int64, diffData, extra []byte) []byte {
	t.Helper()
	var ctrl []byte
	for _, tr := range triples {
		ctrl = append(append(append(ctrl, offtout(tr[0])...), offtout(tr[1])...), offtout(tr[2])...)
	}
	c, d, e := bz2(t, ctrl), bz2(t, diffData), bz2(t, extra)
	p := []byte(bsdiffMagic)
	p = append(p, offtout(int64(len(c)))...)
	p = append(p, offtout(int64(len(d)))...)
	p = append(p, offtout(newSize)...)
	return append(append(append(p, c...), d...), e...)
}

// bz2 compresses with Debian's bzip2 if present (the standard library only
// decompresses), else uses a patch made by Make as the source of streams.
func bz2(t testing.TB, data []byte) []byte {
	t.Helper()
	cmd := exec.Command("bzip2", "-c")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Skip("bzip2 not installed; skipping crafted patches")
	}
	return out
}

func TestHostilePatches(t *testing.T) {
	old := pseudoRandom(1000, 5)
	good, _ := Make(context.Background(), old, pseudoRandom(1000, 6))
	zeros := make([]byte, 1<<20)
	tests := []struct {
		name  string
		patch []byte
		size  int64
	}{
		{"empty", nil, 10},
		{"bad magic", append([]byte("BSDIFF41"), good[8:]...), 1000},
		{"truncated header", good[:20], 1000},
		{"truncated body", good[:len(good)/2], 1000},
		{"size lies (huge)", append(append(append([]byte(nil), good[:24]...), offtout(1<<40)...), good[32:]...), 1000},
		{"size differs from manifest", good, 999},
		{"declared size over cap", good, MaxPatchOutput + 1},
		{"negative ctrl length in header", append(append([]byte(bsdiffMagic), offtout(-5)...), good[16:]...), 1000},
		{"negative add", craft(t, 100, [][3]int64{{-10, 0, 0}}, nil, nil), 100},
		{"negative extra", craft(t, 100, [][3]int64{{0, -10, 0}}, nil, nil), 100},
		{"writes past size", craft(t, 100, [][3]int64{{50, 60, 0}}, make([]byte, 50), make([]byte, 60)), 100},
		{"never advances", craft(t, 100, bomb(5000), nil, nil), 100},
		{"control stream ends early", craft(t, 100, [][3]int64{{10, 0, 0}}, make([]byte, 10), nil), 100},
		{"diff stream short", craft(t, 100, [][3]int64{{100, 0, 0}}, make([]byte, 10), nil), 100},
		{"seek far out of old", craft(t, 20, [][3]int64{{10, 0, 1 << 40}, {10, 0, -(1 << 41)}}, make([]byte, 20), nil), 20},
		{"bzip2 bomb of zero triples", craft(t, 10, [][3]int64{{0, 0, 0}}, nil, zeros), 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Apply(old, tc.patch, tc.size)
			if tc.name == "seek far out of old" {
				// Valid bsdiff: bytes outside old count as zero. It must
				// simply not crash.
				if err != nil && !errors.Is(err, ErrCorruptPatch) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrCorruptPatch) {
				t.Fatalf("err = %v (output %d bytes), want ErrCorruptPatch", err, len(out))
			}
		})
	}
}

func libPatch(old, patch []byte) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return bspatch.Bytes(old, patch)
}

// bomb is n control triples that produce nothing.
func bomb(n int) [][3]int64 { return make([][3]int64, n) }

func FuzzApply(f *testing.F) {
	old := pseudoRandom(512, 7)
	for _, nw := range [][]byte{pseudoRandom(600, 8), append(append([]byte(nil), old...), 'x'), nil} {
		p, _ := Make(context.Background(), old, nw)
		f.Add(p, int64(len(nw)))
	}
	f.Add([]byte("BSDIFF40"), int64(0))
	f.Fuzz(func(t *testing.T, patch []byte, size int64) {
		if size > 1<<20 {
			size = 1 << 20 // keep the fuzzer's allocations small; Apply caps far higher
		}
		out, err := Apply(old, patch, size)
		if err != nil {
			if !errors.Is(err, ErrCorruptPatch) {
				t.Fatalf("error does not wrap ErrCorruptPatch: %v", err)
			}
			return
		}
		if int64(len(out)) != size {
			t.Fatalf("accepted output of %d bytes for declared %d", len(out), size)
		}
		// Whatever we accept, the library's own patcher must turn into the
		// same bytes (it may panic on inputs we refuse, so only now).
		lib, lerr := libPatch(old, patch)
		if lerr == nil && !bytes.Equal(lib, out) {
			t.Fatalf("library's bspatch gives different bytes")
		}
	})
}
