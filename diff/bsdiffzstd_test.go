package diff

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// zenc compresses b as zstd frames of the given window.
func zenc(t testing.TB, b []byte, window int) []byte {
	t.Helper()
	z, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(window), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	return z.EncodeAll(b, nil)
}

// asZstdPatch gives an assembled patch bsdiff-zstd's magic.
func asZstdPatch(p []byte) []byte {
	copy(p, bsdiffZstdMagic)
	return p
}

// zstdPatch builds a bsdiff-zstd patch from raw streams, each compressed as
// zstd frames with the given window.
func zstdPatch(t testing.TB, newSize int64, ctrl, diff, extra []byte, window int) []byte {
	t.Helper()
	return asZstdPatch(assemble(newSize, zenc(t, ctrl, window), zenc(t, diff, window), zenc(t, extra, window)))
}

func decodeZstdPatch(old, patch []byte, size int64) ([]byte, error) {
	d := NewDecoder()
	defer d.Close()
	var out bytes.Buffer
	err := d.DecodeTo(context.Background(), KindBsdiffZstd, io.NewSectionReader(bytes.NewReader(old), 0, int64(len(old))), io.NewSectionReader(bytes.NewReader(patch), 0, int64(len(patch))), size, &out)
	return out.Bytes(), err
}

// TestZstdPatchMatchesBSDIFF40: a publisher's bsdiff-zstd patch means what
// the BSDIFF40 patch it came from means, byte for byte, and pooled
// decoders stay usable after it.
func TestZstdPatchMatchesBSDIFF40(t *testing.T) {
	old := pseudoRandom(300<<10, 41)
	nw := append(bytes.Clone(old[:100<<10]), pseudoRandom(5000, 42)...)
	nw = append(nw, old[120<<10:]...)
	for i := 0; i < len(nw); i += 4096 {
		nw[i]++ // scattered edits: a diff stream of sparse bytes
	}
	raw, err := makeRaw(t.Context(), old, nw)
	if err != nil {
		t.Fatal(err)
	}
	zp, err := toZstdPatch(raw, &zstdEncoders{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d-byte target: BSDIFF40 %d bytes (fitted %d), bsdiff-zstd %d", len(nw), len(raw), len(fitLevels(raw)), len(zp))
	for range 2 {
		got, err := decodeZstdPatch(old, zp, int64(len(nw)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, nw) {
			t.Fatal("bsdiff-zstd patch does not rebuild the target")
		}
	}
	if _, err := Apply(old, zp, int64(len(nw))); !errors.Is(err, ErrCorruptPatch) {
		t.Errorf("a bsdiff-zstd patch applied as BSDIFF40: %v", err)
	}
	if _, err := decodeZstdPatch(old, fitLevels(raw), int64(len(nw))); !errors.Is(err, ErrCorruptPatch) {
		t.Errorf("a BSDIFF40 patch decoded as bsdiff-zstd: %v", err)
	}
}

func TestZstdPatchRefusesHostilePatches(t *testing.T) {
	old := pseudoRandom(1000, 5)
	extra := pseudoRandom(300, 6)
	nw := append(bytes.Clone(old[200:]), extra...)
	ctrl := encodeTriples([]triple{{800, 300, 0}})
	diff := make([]byte, 800)
	for i := range diff {
		diff[i] = nw[i] - old[i]
	}
	good := zstdPatch(t, int64(len(nw)), ctrl, diff, extra, 1<<10)
	if got, err := decodeZstdPatch(old, good, int64(len(nw))); err != nil || !bytes.Equal(got, nw) {
		t.Fatalf("the well-formed patch fails: %v", err)
	}
	zeros := make([]byte, 8<<20)
	tests := []struct {
		name  string
		patch []byte
		size  int64
	}{
		{"BSDIFF40 magic", append([]byte(bsdiffMagic), good[8:]...), int64(len(nw))},
		{"truncated", good[:len(good)-5], int64(len(nw))},
		{"header only", good[:headerLen], int64(len(nw))},
		{"declared size differs", good, int64(len(nw)) + 1},
		{"control stream in bzip2", asZstdPatch(assemble(int64(len(nw)), bz2(t, ctrl), zenc(t, diff, 1<<10), zenc(t, extra, 1<<10))), int64(len(nw))},
		{"data after the control stream's frame", asZstdPatch(assemble(int64(len(nw)), append(zenc(t, ctrl, 1<<10), "junk"...), zenc(t, diff, 1<<10), zenc(t, extra, 1<<10))), int64(len(nw))},
		{"more triples than the output needs", zstdPatch(t, int64(len(nw)), append(bytes.Clone(ctrl), ctrl...), diff, extra, 1<<10), int64(len(nw))},
		{"seek before the old file", zstdPatch(t, int64(len(nw)), encodeTriples([]triple{{800, 300, -5000}}), diff, extra, 1<<10), int64(len(nw))},
		{"diff stream short", zstdPatch(t, int64(len(nw)), ctrl, diff[:400], extra, 1<<10), int64(len(nw))},
		// A few KB that would need an 8 MiB window: refused at the frame
		// header, before the decoder allocates it.
		{"window over the limit", zstdPatch(t, int64(len(nw)), ctrl, append(bytes.Clone(diff), zeros...), extra, 8<<20), int64(len(nw))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := decodeZstdPatch(old, tc.patch, tc.size)
			if err == nil {
				t.Fatalf("accepted (%d bytes out)", len(out))
			}
			if !errors.Is(err, ErrCorruptEncoding) {
				t.Errorf("error does not wrap ErrCorruptEncoding: %v", err)
			}
			t.Log(err)
		})
	}
}

func FuzzZstdPatch(f *testing.F) {
	old := pseudoRandom(512, 7)
	zs := &zstdEncoders{}
	for _, nw := range [][]byte{pseudoRandom(600, 8), append(bytes.Clone(old), 'x'), old[100:300], nil} {
		raw, err := makeRaw(f.Context(), old, nw)
		if err != nil {
			f.Fatal(err)
		}
		zp, err := toZstdPatch(raw, zs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(zp, int64(len(nw)))
	}
	f.Fuzz(func(t *testing.T, patch []byte, size int64) {
		size = min(size, 1<<20)
		out, err := decodeZstdPatch(old, patch, size)
		if err != nil {
			if !errors.Is(err, ErrCorruptEncoding) {
				t.Fatalf("error does not wrap ErrCorruptEncoding: %v", err)
			}
			return
		}
		if int64(len(out)) != size {
			t.Fatalf("accepted an output of %d bytes for a declared %d", len(out), size)
		}
		// The triples and checks are BSDIFF40's: the same patch with its
		// streams in bzip2 means the same bytes.
		h, err := readHeaderOf(bytes.NewReader(patch), int64(len(patch)), bsdiffZstdMagic)
		if err != nil {
			t.Fatalf("accepted a patch whose header does not read: %v", err)
		}
		streams := []int64{headerLen, headerLen + h.ctrlLen, headerLen + h.ctrlLen + h.diffLen, int64(len(patch))}
		var raw [3][]byte
		for i := range 3 {
			z, _ := zstd.NewReader(bytes.NewReader(patch[streams[i]:streams[i+1]]), zstd.WithDecoderConcurrency(1))
			raw[i], err = io.ReadAll(z)
			z.Close()
			if err != nil {
				return // read past what the applier needed; nothing to compare
			}
		}
		ref, rerr := refApply(old, assemble(size, bz2(t, raw[0]), bz2(t, raw[1]), bz2(t, raw[2])), size)
		if rerr == nil && !bytes.Equal(ref, out) {
			t.Fatalf("bsdiff-zstd output differs from the reference bspatch's on the same streams")
		}
	})
}
