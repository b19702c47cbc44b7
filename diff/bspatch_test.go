package diff

import (
	"bytes"
	stdbzip2 "compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"testing"

	"github.com/dsnet/compress/bzip2"
)

// offtout encodes bsdiff's sign-magnitude integer.
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

func bz2(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, err := bzip2.NewWriter(&b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

type triple [3]int64 // add, copy, seek

func encodeTriples(ts []triple) []byte {
	var b []byte
	for _, tr := range ts {
		b = append(append(append(b, offtout(tr[0])...), offtout(tr[1])...), offtout(tr[2])...)
	}
	return b
}

// assemble builds a patch from a header and its three compressed streams.
func assemble(newSize int64, ctrl, diff, extra []byte) []byte {
	p := []byte(bsdiffMagic)
	p = append(p, offtout(int64(len(ctrl)))...)
	p = append(p, offtout(int64(len(diff)))...)
	p = append(p, offtout(newSize)...)
	return append(append(append(p, ctrl...), diff...), extra...)
}

// craft builds a patch with well-formed bzip2 streams around whatever
// control triples an attacker chooses.
func craft(t testing.TB, newSize int64, ts []triple, diff, extra []byte) []byte {
	t.Helper()
	return assemble(newSize, bz2(t, encodeTriples(ts)), bz2(t, diff), bz2(t, extra))
}

func withHeader(p []byte, off int, v int64) []byte {
	p = bytes.Clone(p)
	copy(p[off:], offtout(v))
	return p
}

func TestApplyRefusesHostilePatches(t *testing.T) {
	old := pseudoRandom(1000, 5)
	nw := append(bytes.Clone(old[200:]), pseudoRandom(300, 6)...)
	good, err := Make(t.Context(), old, nw)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(nw))
	if _, err := Apply(old, good, size); err != nil {
		t.Fatalf("the good patch the cases derive from: %v", err)
	}
	// A well-formed control stream moved so that it overruns its declared
	// length into the diff stream.
	ctrl, diff := bz2(t, encodeTriples([]triple{{10, 0, 0}})), bz2(t, make([]byte, 10))
	half := len(ctrl) / 2
	overrun := assemble(10, ctrl[:half], append(bytes.Clone(ctrl[half:]), diff...), bz2(t, nil))
	// The sign bit over the largest magnitude: -(2^63-1).
	minus := -int64(math.MaxInt64)

	tests := []struct {
		name   string
		patch  []byte
		size   int64
		want   error
		phrase string // what the error must tell a user
	}{
		{"empty", nil, 10, ErrCorruptPatch, "0 bytes, want 32"},
		{"bad magic", append([]byte("BSDIFF41"), good[8:]...), size, ErrCorruptPatch, `magic "BSDIFF41"`},
		{"truncated header", good[:20], size, ErrCorruptPatch, "20 bytes, want 32"},
		{"truncated body", good[:40], size, ErrCorruptPatch, "exceed the"},
		{"truncated extra stream", good[:len(good)-20], size, ErrCorruptPatch, "extra stream: ends at output byte"},
		{"header size lies (huge)", withHeader(good, 24, 1<<40), size, ErrCorruptPatch, "new size 1099511627776, but 1100 declared"},
		{"header size lies (short)", withHeader(good, 24, size-1), size, ErrCorruptPatch, "but 1100 declared"},
		{"declared size over the limit", good, MaxPatchOutput + 1, ErrTooLarge, "over the 1073741824-byte limit"},
		{"declared size negative", good, -1, ErrCorruptPatch, "negative"},
		{"negative control length", withHeader(good, 8, -5), size, ErrCorruptPatch, "negative field"},
		{"negative diff length", withHeader(good, 16, minus), size, ErrCorruptPatch, "negative field"},
		{"negative new size", withHeader(good, 24, -1), -1, ErrCorruptPatch, "negative"},
		{"control length past the end", withHeader(good, 8, int64(len(good))), size, ErrCorruptPatch, "exceed the"},
		{"diff length past the end", withHeader(good, 16, math.MaxInt64), size, ErrCorruptPatch, "exceed the"},
		{"control stream not bzip2", assemble(10, []byte("not bzip2 at all"), nil, nil), 10, ErrCorruptPatch, "control stream"},
		{"control stream overruns its length", overrun, 10, ErrCorruptPatch, "ends after 0 triples"},
		{"triples after the output is complete", craft(t, 10, []triple{{10, 0, 0}, {0, 0, 0}}, make([]byte, 10), nil), 10, ErrCorruptPatch, "more data after the 1 triples"},
		{"negative add", craft(t, 100, []triple{{-10, 0, 0}}, nil, nil), 100, ErrCorruptPatch, "negative length (add -10"},
		{"negative copy", craft(t, 100, []triple{{0, -10, 0}}, nil, nil), 100, ErrCorruptPatch, "negative length (add 0, copy -10)"},
		{"most negative add", craft(t, 100, []triple{{minus, 0, 0}}, nil, nil), 100, ErrCorruptPatch, "negative length"},
		{"huge add", craft(t, 100, []triple{{1 << 62, 0, 0}}, nil, nil), 100, ErrCorruptPatch, "past the new size 100"},
		{"huge copy", craft(t, 100, []triple{{10, math.MaxInt64, 0}}, make([]byte, 10), nil), 100, ErrCorruptPatch, "past the new size 100"},
		{"writes past the new size", craft(t, 100, []triple{{50, 60, 0}}, make([]byte, 50), make([]byte, 60)), 100, ErrCorruptPatch, "writes 50+60 bytes at output byte 0"},
		{"adds past the old file", craft(t, 1100, []triple{{1001, 99, 0}}, make([]byte, 1001), make([]byte, 99)), 1100, ErrCorruptPatch, "past the old file's 1000"},
		{"seek past the old file", craft(t, 20, []triple{{10, 0, 1 << 40}, {10, 0, 0}}, make([]byte, 20), nil), 20, ErrCorruptPatch, "seek 1099511627776 from old byte 10"},
		{"seek before the old file", craft(t, 20, []triple{{10, 0, -11}, {10, 0, 0}}, make([]byte, 20), nil), 20, ErrCorruptPatch, "seek -11 from old byte 10"},
		{"most negative seek", craft(t, 20, []triple{{10, 0, minus}, {10, 0, 0}}, make([]byte, 20), nil), 20, ErrCorruptPatch, "leaves the old file"},
		{"control stream ends early", craft(t, 100, []triple{{10, 0, 0}}, make([]byte, 10), nil), 100, ErrCorruptPatch, "ends after 1 triples, at output byte 10 of 100"},
		{"triples that write nothing", craft(t, 100, make([]triple, 2*maxEmptyTriples), nil, nil), 100, ErrCorruptPatch, "write nothing"},
		{"diff stream short", craft(t, 100, []triple{{100, 0, 0}}, make([]byte, 10), nil), 100, ErrCorruptPatch, "diff stream: ends at output byte 0 (control triple 0)"},
		{"extra stream short", craft(t, 100, []triple{{0, 100, 0}}, nil, make([]byte, 10)), 100, ErrCorruptPatch, "extra stream: ends at output byte 0 (control triple 0)"},
		{"diff stream not bzip2", assemble(10, bz2(t, encodeTriples([]triple{{10, 0, 0}})), []byte("garbage!"), nil), 10, ErrCorruptPatch, "diff stream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Apply(old, tc.patch, tc.size)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v (output %d bytes), want one wrapping %v", err, len(out), tc.want)
			}
			if out != nil {
				t.Errorf("output of %d bytes alongside the error", len(out))
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "diff: ") || !strings.Contains(msg, tc.phrase) {
				t.Errorf("error %q does not say %q", msg, tc.phrase)
			}
		})
	}
}

// bomb is a bzip2 file that expands to copies×32 MiB of zeros: each
// 32 MiB stream compresses to well under a hundred bytes, and both bzip2
// readers go on from one stream to the next.
func bomb(t testing.TB, copies int) []byte {
	one := bz2(t, make([]byte, 32<<20))
	return bytes.Repeat(one, copies)
}

func allocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// TestApplyBzip2Bombs: 64 GiB of zero triples in a patch of a few
// kilobytes are refused after a bounded amount of decoding (without the
// bound the library would spin through all of them for hours), and a bomb
// in the diff or extra stream is read no further than the output needs.
func TestApplyBzip2Bombs(t *testing.T) {
	b := bomb(t, 2048)
	old := pseudoRandom(100, 9)
	tests := []struct {
		name    string
		patch   []byte
		want    error
		wantOut []byte
	}{
		{"control stream", assemble(100, b, bz2(t, nil), bz2(t, nil)), ErrCorruptPatch, nil},
		// Diff bytes of zero added to old give old.
		{"diff stream", assemble(100, bz2(t, encodeTriples([]triple{{100, 0, -100}})), b, bz2(t, nil)), nil, old},
		{"extra stream", assemble(100, bz2(t, encodeTriples([]triple{{0, 100, 0}})), bz2(t, nil), b), nil, make([]byte, 100)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := allocated()
			out, err := Apply(old, tc.patch, 100)
			used := allocated() - before
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !bytes.Equal(out, tc.wantOut) {
				t.Fatalf("output %x, want %x", out, tc.wantOut)
			}
			// The decoders' block buffers, not gigabytes.
			if used > 64<<20 {
				t.Fatalf("allocated %d MiB", used>>20)
			}
			t.Logf("patch of %d bytes; Apply allocated %.1f MiB", len(tc.patch), float64(used)/(1<<20))
		})
	}
}

// refApply is Colin Percival's bspatch 4.3 in Go, with the standard
// library's bzip2 reading each stream within its own bounds: the
// reference the fuzz test holds Apply to on well-formed streams. It bounds
// only what keeps the fuzzer safe.
func refApply(old, patch []byte, newSize int64) ([]byte, error) {
	h, err := readHeader(bytes.NewReader(patch), int64(len(patch)))
	if err != nil || h.newSize != newSize || newSize > 1<<20 {
		return nil, errors.New("ref: header")
	}
	body := patch[headerLen:]
	ctrl := stdbzip2.NewReader(bytes.NewReader(body[:h.ctrlLen]))
	diffs := stdbzip2.NewReader(bytes.NewReader(body[h.ctrlLen : h.ctrlLen+h.diffLen]))
	extras := stdbzip2.NewReader(bytes.NewReader(body[h.ctrlLen+h.diffLen:]))
	out := make([]byte, newSize)
	var buf [24]byte
	var newpos, oldpos int64
	for n := 0; newpos < newSize; n++ {
		if n > int(newSize)+maxEmptyTriples {
			return nil, errors.New("ref: too many triples")
		}
		if _, err := io.ReadFull(ctrl, buf[:]); err != nil {
			return nil, fmt.Errorf("ref: control: %w", err)
		}
		x, y, z := offtin(buf[0:]), offtin(buf[8:]), offtin(buf[16:])
		if x < 0 || y < 0 || x > newSize-newpos || y > newSize-newpos-x {
			return nil, errors.New("ref: bad triple")
		}
		if _, err := io.ReadFull(diffs, out[newpos:newpos+x]); err != nil {
			return nil, fmt.Errorf("ref: diff: %w", err)
		}
		for i := int64(0); i < x; i++ {
			if oldpos+i >= 0 && oldpos+i < int64(len(old)) {
				out[newpos+i] += old[oldpos+i]
			}
		}
		newpos += x
		oldpos += x
		if _, err := io.ReadFull(extras, out[newpos:newpos+y]); err != nil {
			return nil, fmt.Errorf("ref: extra: %w", err)
		}
		newpos += y
		if z > 1<<40 || z < -(1<<40) {
			return nil, errors.New("ref: seek")
		}
		oldpos += z
	}
	// Only well-formed streams define an output: on a malformed block,
	// decoders differ in what they return before its checksum is due.
	for _, r := range []io.Reader{ctrl, diffs, extras} {
		if _, err := io.Copy(io.Discard, io.LimitReader(r, 1<<20)); err != nil {
			return nil, fmt.Errorf("ref: stream does not end cleanly: %w", err)
		}
	}
	return out, nil
}

func FuzzApply(f *testing.F) {
	// The committed corpus in testdata/fuzz/FuzzApply adds hostile cases
	// and Debian bsdiff's patches against this same old file.
	old := pseudoRandom(512, 7)
	for _, nw := range [][]byte{pseudoRandom(600, 8), append(bytes.Clone(old), 'x'), old[100:300], nil} {
		p, err := Make(f.Context(), old, nw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p, int64(len(nw)))
	}
	f.Fuzz(func(t *testing.T, patch []byte, size int64) {
		size = min(size, 1<<20) // keep the fuzzer's allocations small; Apply's limit is far higher
		out, err := Apply(old, patch, size)
		if err != nil {
			if !errors.Is(err, ErrCorruptPatch) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error wraps neither ErrCorruptPatch nor ErrTooLarge: %v", err)
			}
			if out != nil {
				t.Fatalf("output alongside error %v", err)
			}
			return
		}
		if int64(len(out)) != size {
			t.Fatalf("accepted an output of %d bytes for a declared %d", len(out), size)
		}
		// Whatever Apply accepts, bspatch 4.3's semantics must produce too,
		// byte for byte.
		ref, rerr := refApply(old, patch, size)
		if rerr == nil && !bytes.Equal(ref, out) {
			t.Fatalf("Apply's output differs from the reference bspatch's")
		}
		// And what the laptop's old in-memory path made of it, so that no
		// patch it accepted before means something else now.
		if legacy, lerr := legacyApply(old, patch); lerr == nil && !bytes.Equal(legacy, out) {
			t.Fatalf("Apply's output differs from go-bsdiff's bspatch's")
		}
		// Streaming through ReadAt and a writer is the same applier.
		var streamed bytes.Buffer
		if err := Patch(t.Context(), bytes.NewReader(old), int64(len(old)), bytes.NewReader(patch), int64(len(patch)), size, &streamed); err != nil || !bytes.Equal(streamed.Bytes(), out) {
			t.Fatalf("Patch disagrees with Apply: %v", err)
		}
	})
}
