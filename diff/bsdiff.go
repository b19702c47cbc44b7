package diff

import (
	"bytes"
	"compress/bzip2"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/gabstv/go-bsdiff/pkg/bsdiff"
)

// MaxPatchOutput is the largest file a patch may produce: a patch's header
// names the new size and the library allocates it before looking further.
const MaxPatchOutput = 1 << 30

const bsdiffMagic = "BSDIFF40"

// ErrCorruptPatch is wrapped by every error about a patch that cannot be
// applied.
var ErrCorruptPatch = errors.New("corrupt patch")

// MemoryNeeded estimates what making a patch from an old file of n bytes
// takes: the library's suffix array costs about 20 bytes per old byte.
func MemoryNeeded(n int64) int64 { return 20*n + 1<<20 }

// Make returns a BSDIFF40 patch from old to new. The library cannot be
// interrupted, so when ctx ends first Make returns ctx's error at once and
// the computation finishes in the background, its result discarded.
func Make(ctx context.Context, old, new []byte) ([]byte, error) {
	type result struct {
		patch []byte
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if p := recover(); p != nil {
				r.err = fmt.Errorf("bsdiff: %v", p)
			}
			done <- r
		}()
		r.patch, r.err = bsdiff.Bytes(old, new)
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("make patch: %w", r.err)
		}
		return r.patch, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("make patch: %w", ctx.Err())
	}
}

// offtin decodes bsdiff's sign-magnitude little-endian int64.
func offtin(b []byte) int64 {
	v := int64(binary.LittleEndian.Uint64(b) &^ (1 << 63))
	if b[7]&0x80 != 0 {
		return -v
	}
	return v
}

type header struct {
	ctrlLen, diffLen, newSize int64
}

// parseHeader checks the 32-byte header against the patch's length and the
// size the caller expects.
func parseHeader(patch []byte) (header, error) {
	var h header
	if len(patch) < 32 || string(patch[:8]) != bsdiffMagic {
		return h, fmt.Errorf("%w: not a BSDIFF40 patch", ErrCorruptPatch)
	}
	h.ctrlLen, h.diffLen, h.newSize = offtin(patch[8:]), offtin(patch[16:]), offtin(patch[24:])
	rest := int64(len(patch) - 32)
	switch {
	case h.ctrlLen < 0 || h.diffLen < 0 || h.newSize < 0:
		return h, fmt.Errorf("%w: header has negative lengths (%d, %d, %d)", ErrCorruptPatch, h.ctrlLen, h.diffLen, h.newSize)
	case h.ctrlLen > rest || h.diffLen > rest-h.ctrlLen:
		return h, fmt.Errorf("%w: header lengths (%d + %d) exceed the patch's %d bytes", ErrCorruptPatch, h.ctrlLen, h.diffLen, rest)
	}
	return h, nil
}

// Apply applies a BSDIFF40 patch to old and returns the new bytes, which
// must be exactly newSize long (the size the signed manifest declares). It is
// safe on any input: it returns an error wrapping ErrCorruptPatch and never
// panics, loops or allocates beyond newSize. Callers check the patch's hash
// before and the output's hash after.
//
// The format is applied here rather than by the library's bspatch, which
// panics on negative lengths and allocates whatever a header claims: this
// one reads the three streams with the standard library's bzip2 and checks
// every control triple before acting on it. FuzzApply checks that the two
// agree on every patch this one accepts.
func Apply(old, patch []byte, newSize int64) ([]byte, error) {
	if newSize < 0 || newSize > MaxPatchOutput {
		return nil, fmt.Errorf("%w: declared size %d over the %d limit", ErrCorruptPatch, newSize, int64(MaxPatchOutput))
	}
	h, err := parseHeader(patch)
	if err != nil {
		return nil, err
	}
	if h.newSize != newSize {
		return nil, fmt.Errorf("%w: header says %d bytes, manifest %d", ErrCorruptPatch, h.newSize, newSize)
	}
	body := patch[32:]
	ctrl := bzip2.NewReader(bytes.NewReader(body[:h.ctrlLen]))
	diffs := bzip2.NewReader(bytes.NewReader(body[h.ctrlLen : h.ctrlLen+h.diffLen]))
	extras := bzip2.NewReader(bytes.NewReader(body[h.ctrlLen+h.diffLen:]))
	return applyStreams(old, ctrl, diffs, extras, newSize)
}

// applyStreams runs bsdiff's control triples over the three decoded
// streams, checking each triple before acting on it.
func applyStreams(old []byte, ctrl, diffs, extras io.Reader, newSize int64) ([]byte, error) {
	out := make([]byte, newSize)
	var buf [24]byte
	var newpos, oldpos int64
	oldLen := int64(len(old))
	// Every triple but a few advances the output; allow slack for encoders
	// that emit empty ones, and refuse streams of nothing but those.
	limit := newSize + 1024
	for n := int64(0); newpos < newSize; n++ {
		if n > limit {
			return nil, fmt.Errorf("%w: control stream has more triples than output bytes", ErrCorruptPatch)
		}
		if _, err := io.ReadFull(ctrl, buf[:]); err != nil {
			return nil, fmt.Errorf("%w: control stream ends at output byte %d of %d: %v", ErrCorruptPatch, newpos, newSize, err)
		}
		add, extra, seek := offtin(buf[0:]), offtin(buf[8:]), offtin(buf[16:])
		if add < 0 || extra < 0 {
			return nil, fmt.Errorf("%w: negative length in control triple %d", ErrCorruptPatch, n)
		}
		if add > newSize-newpos || extra > newSize-newpos-add {
			return nil, fmt.Errorf("%w: control triple %d writes past the new size %d", ErrCorruptPatch, n, newSize)
		}
		if _, err := io.ReadFull(diffs, out[newpos:newpos+add]); err != nil {
			return nil, fmt.Errorf("%w: diff stream: %v", ErrCorruptPatch, err)
		}
		// Bytes outside old count as zero, as in Colin Percival's bspatch.
		lo, hi := max(oldpos, 0), min(oldpos+add, oldLen)
		for i := lo; i < hi; i++ {
			out[newpos+i-oldpos] += old[i]
		}
		newpos += add
		oldpos += add
		if _, err := io.ReadFull(extras, out[newpos:newpos+extra]); err != nil {
			return nil, fmt.Errorf("%w: extra stream: %v", ErrCorruptPatch, err)
		}
		newpos += extra
		if seek > 1<<62 || seek < -(1<<62) || oldpos > 1<<62 || oldpos < -(1<<62) {
			return nil, fmt.Errorf("%w: seek out of range in triple %d", ErrCorruptPatch, n)
		}
		oldpos += seek
	}
	// Each stream must end exactly where the triples stop: reading to its
	// end makes bzip2 check its checksums, so a corrupt stream that still
	// yielded enough bytes is refused here, not after.
	for _, st := range []struct {
		name string
		r    io.Reader
	}{{"control", ctrl}, {"diff", diffs}, {"extra", extras}} {
		var one [1]byte
		n, err := io.ReadFull(st.r, one[:])
		if n > 0 {
			return nil, fmt.Errorf("%w: %s stream has bytes after the last triple", ErrCorruptPatch, st.name)
		}
		if err != io.EOF {
			return nil, fmt.Errorf("%w: %s stream: %v", ErrCorruptPatch, st.name, err)
		}
	}
	return out, nil
}

// MakeFiles writes a plain BSDIFF40 patch from oldPath to newPath, as
// Debian's bsdiff does.
func MakeFiles(ctx context.Context, oldPath, newPath, patchPath string) error {
	old, err := os.ReadFile(oldPath)
	if err != nil {
		return err
	}
	nw, err := os.ReadFile(newPath)
	if err != nil {
		return err
	}
	patch, err := Make(ctx, old, nw)
	if err != nil {
		return err
	}
	return writeFileAtomic(patchPath, patch, 0o644)
}

// ApplyFiles applies a BSDIFF40 patch (such as Debian's bsdiff makes) to
// oldPath and writes newPath; the new size comes from the patch's header,
// within MaxPatchOutput.
func ApplyFiles(oldPath, patchPath, newPath string) error {
	old, err := os.ReadFile(oldPath)
	if err != nil {
		return err
	}
	patch, err := os.ReadFile(patchPath)
	if err != nil {
		return err
	}
	h, err := parseHeader(patch)
	if err != nil {
		return fmt.Errorf("%s: %w", patchPath, err)
	}
	out, err := Apply(old, patch, h.newSize)
	if err != nil {
		return fmt.Errorf("%s: %w", patchPath, err)
	}
	return writeFileAtomic(newPath, out, 0o644)
}

// writeFileAtomic leaves either the whole new file or nothing.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
