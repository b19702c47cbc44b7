package diff

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// The memory test runs each decode in a child process of this test binary,
// so that the kernel's high-water mark (VmHWM) measures that decode alone.
const (
	measureEnv    = "PEERUP_DECODE_MEASURE"
	measureDirEnv = "PEERUP_DECODE_DIR"
)

// scatteredPatch is what bsdiff makes of a large file with a security
// update's scattered changes: a triple per unchanged stretch, whose diff
// bytes are zero but for the edited ones, and short inserted runs. Making
// it with go-bsdiff would take 20 bytes of memory per old byte and minutes.
func scatteredPatch(t testing.TB, old []byte) (patch, nw []byte) {
	const edits = 64
	var ts []triple
	var diffs, extras []byte
	seg := len(old) / edits
	for i := range edits {
		d := make([]byte, seg)
		copy(d[seg/2:], "CVE-2026-0001 fixed here")
		ins := pseudoRandom(200, int64(i))
		for j := range d {
			nw = append(nw, old[i*seg+j]+d[j])
		}
		nw = append(nw, ins...)
		diffs, extras = append(diffs, d...), append(extras, ins...)
		ts = append(ts, triple{int64(seg), int64(len(ins)), 0})
	}
	return craft(t, int64(len(nw)), ts, diffs, extras), nw
}

// TestDecodePeakMemory measures the peak RSS of decoding large encodings
// the old way (everything in memory) and the streaming way, and holds the
// streaming decodes to DecodeMemory. Run with -v for the figures.
func TestDecodePeakMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 64 MiB files")
	}
	dir := t.TempDir()
	const big = 64 << 20
	old := pseudoRandom(big, 31)
	patch, nw := scatteredPatch(t, old)
	zpatch, err := toZstdPatch(patch, &zstdEncoders{})
	if err != nil {
		t.Fatal(err)
	}
	zst, err := zstdEncodeLevel(nw, nil, zstd.SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	smallBase := pseudoRandom(4<<20, 32)
	smallNew := append(bytes.Clone(smallBase[:2<<20]), pseudoRandom(1<<20, 33)...)
	smallNew = append(smallNew, smallBase[2<<20:]...)
	dict, err := EncodeZstdDict(smallBase, smallNew)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string][]byte{
		"old": old, "patch": patch, "zpatch": zpatch, "new": nw, "zst": zst,
		"smallbase": smallBase, "dict": dict, "smallnew": smallNew,
	})
	old, nw = nil, nil
	runtime.GC()

	tests := []struct {
		mode, kind, base, enc, want string
	}{
		{"legacy", "bsdiff", "old", "patch", "new"},
		{"stream", "bsdiff", "old", "patch", "new"},
		{"stream", "bsdiff-zstd", "old", "zpatch", "new"},
		{"legacy", "zstd", "", "zst", "new"},
		{"stream", "zstd", "", "zst", "new"},
		{"legacy", "zstd-dict", "smallbase", "dict", "smallnew"},
		{"stream", "zstd-dict", "smallbase", "dict", "smallnew"},
	}
	for _, tc := range tests {
		t.Run(tc.mode+" "+tc.kind, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestDecodePeakMemoryChild$", "-test.v")
			cmd.Env = append(os.Environ(), measureEnv+"="+strings.Join([]string{tc.mode, tc.kind, tc.base, tc.enc, tc.want}, ","), measureDirEnv+"="+dir)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			var peak, heap int64
			for _, line := range strings.Split(string(out), "\n") {
				if _, err := fmt.Sscanf(strings.TrimSpace(line), "peak %d heap %d", &peak, &heap); err == nil {
					break
				}
			}
			if peak == 0 {
				t.Fatalf("child reported nothing:\n%s", out)
			}
			sameFile(t, filepath.Join(dir, "out-"+tc.mode+"-"+tc.kind), mustRead(t, filepath.Join(dir, tc.want)))
			var baseSize int64
			if tc.base != "" {
				baseSize = fileSize(t, filepath.Join(dir, tc.base))
			}
			size := fileSize(t, filepath.Join(dir, tc.want))
			est := DecodeMemory(Kind(tc.kind), baseSize, size)
			t.Logf("%s %s of %.1f MiB: peak RSS +%.1f MiB, heap from the OS %.1f MiB; DecodeMemory %.1f MiB",
				tc.mode, tc.kind, float64(size)/(1<<20), float64(peak)/(1<<20), float64(heap)/(1<<20), float64(est)/(1<<20))
			// The heap the runtime took from the OS is what the estimate
			// models; RSS adds the runtime's own pages and GC slack.
			if tc.mode == "stream" && heap > est+4<<20 {
				t.Errorf("streaming %s took %d MiB of heap, over DecodeMemory's %d MiB", tc.kind, heap>>20, est>>20)
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestDecodePeakMemoryChild is one decode of TestDecodePeakMemory, run in a
// process of its own; alone it does nothing.
func TestDecodePeakMemoryChild(t *testing.T) {
	spec := os.Getenv(measureEnv)
	if spec == "" {
		t.Skip("run by TestDecodePeakMemory")
	}
	f := strings.Split(spec, ",")
	mode, kind, baseName, encName, wantName := f[0], Kind(f[1]), f[2], f[3], f[4]
	dir := os.Getenv(measureDirEnv)
	size := fileSize(t, filepath.Join(dir, wantName))
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	start := procStatus(t, "VmRSS")
	out, err := os.Create(filepath.Join(dir, "out-"+mode+"-"+string(kind)))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	switch mode {
	case "legacy":
		// What fetchEncoded and Decode did before streaming: the base read
		// whole, the output built whole, then written.
		var base []byte
		if baseName != "" {
			base = mustRead(t, filepath.Join(dir, baseName))
		}
		encF, err := os.Open(filepath.Join(dir, encName))
		if err != nil {
			t.Fatal(err)
		}
		defer encF.Close()
		var res []byte
		if kind == KindBsdiff {
			p, err := io.ReadAll(encF)
			if err != nil {
				t.Fatal(err)
			}
			res, err = legacyApply(base, p)
			if err != nil {
				t.Fatal(err)
			}
		} else {
			opts := []zstd.DOption{zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderMaxMemory(uint64(size) + 1)}
			if kind == KindZstdDict {
				opts = append(opts, zstd.WithDecoderDictRaw(zstdDictID, base))
			}
			dec, err := zstd.NewReader(encF, opts...)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if size < 64<<20 {
				buf.Grow(int(size))
			}
			if _, err := io.Copy(&buf, dec); err != nil {
				t.Fatal(err)
			}
			dec.Close()
			res = buf.Bytes()
		}
		if _, err := out.Write(res); err != nil {
			t.Fatal(err)
		}
	case "stream":
		var base *io.SectionReader
		if baseName != "" {
			bf, err := os.Open(filepath.Join(dir, baseName))
			if err != nil {
				t.Fatal(err)
			}
			defer bf.Close()
			fi, _ := bf.Stat()
			base = io.NewSectionReader(bf, 0, fi.Size())
		}
		ef, err := os.Open(filepath.Join(dir, encName))
		if err != nil {
			t.Fatal(err)
		}
		defer ef.Close()
		fi, _ := ef.Stat()
		d := NewDecoder()
		if err := d.DecodeTo(t.Context(), kind, base, io.NewSectionReader(ef, 0, fi.Size()), size, out); err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	fmt.Printf("peak %d heap %d\n", procStatus(t, "VmHWM")-start, after.HeapSys-before.HeapSys)
}

// procStatus reads a size in bytes from /proc/self/status.
func procStatus(t *testing.T, field string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}
