package diff

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gabstv/go-bsdiff/pkg/bsdiff"
	"github.com/klauspost/compress/zstd"
)

// MaxPatchOutput is the largest file peerup makes or applies a patch for
// (1 GiB). A patch's header names the size of its output and the applier
// allocates that much before reading further, so the size must be capped
// before anything trusts it; bsdiff's memory appetite (MemoryNeeded) keeps
// larger files on the whole-file encodings anyway.
const MaxPatchOutput = 1 << 30

const (
	bsdiffMagic     = "BSDIFF40"
	bsdiffZstdMagic = "BSDIFFZ1"
	headerLen       = 32
	// patchStreamWindow is the zstd window of a bsdiff-zstd stream. The
	// diff stream's redundancy is local (runs of zeros between edits): on
	// Debian's security updates a 256 KiB window came out no larger than
	// 8 MiB, and it keeps the three decoders of a patch small.
	patchStreamWindow = 256 << 10
)

var (
	// ErrCorruptPatch is wrapped by every error about a patch that is not a
	// well-formed BSDIFF40 patch for the given old file and declared size.
	ErrCorruptPatch = errors.New("corrupt patch")
	// ErrTooLarge is wrapped by errors about outputs over MaxPatchOutput.
	ErrTooLarge = errors.New("over the patch size limit")
)

// MemoryNeeded estimates the memory Make needs for an old file of oldSize
// bytes, so that planners can budget concurrent runs: the library's suffix
// array and its work array take two 8-byte words per old byte, about 20
// bytes per old byte with the rest. Its diff and extra buffers and the
// patch scale with the new file instead: add about three times its size.
func MemoryNeeded(oldSize int64) int64 { return 20*oldSize + 1<<20 }

// Make returns a plain BSDIFF40 patch that turns old into new, which
// Debian's bspatch applies as well as Apply, its streams at fitted levels.
//
// The library can be neither interrupted nor bounded in time (long runs of
// identical bytes make it quadratic), so Make runs it in a goroutine and
// returns ctx's error as soon as ctx ends. That goroutine then finishes in
// the background, holding its memory until it does, and its result is
// dropped: callers that must bound memory account for it (see
// MemoryNeeded) until the work would have ended.
func Make(ctx context.Context, old, new []byte) ([]byte, error) {
	patch, err := makeRaw(ctx, old, new)
	if err != nil {
		return nil, err
	}
	return fitLevels(patch), nil
}

// makeRaw is Make with the library's own level-9 streams.
func makeRaw(ctx context.Context, old, new []byte) ([]byte, error) {
	if len(new) > MaxPatchOutput {
		return nil, fmt.Errorf("diff: make patch: new file is %d bytes, over the %d-byte limit: %w", len(new), MaxPatchOutput, ErrTooLarge)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("diff: make patch: %w", err)
	}
	type result struct {
		patch []byte
		err   error
	}
	done := make(chan result, 1) // buffered: an abandoned run must not block
	go func() {
		var r result
		defer func() {
			// A bug in the unmaintained library must not take the daemon
			// down with it.
			if p := recover(); p != nil {
				r.err = fmt.Errorf("bsdiff panicked: %v", p)
			}
			done <- r
		}()
		r.patch, r.err = bsdiff.Bytes(old, new)
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("diff: make patch: %w", r.err)
		}
		return r.patch, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("diff: make patch: %w", ctx.Err())
	}
}

// offtin decodes bsdiff's 64-bit integer: little-endian magnitude in the
// low 63 bits, sign in the top bit (sign-magnitude, not two's complement).
func offtin(b []byte) int64 {
	v := int64(binary.LittleEndian.Uint64(b) &^ (1 << 63))
	if b[7]&0x80 != 0 {
		return -v
	}
	return v
}

// toZstdPatch rewrites a BSDIFF40 patch as bsdiff-zstd: the same header
// but for its magic and stream lengths, and each stream recompressed with
// zstd. bzip2 decodes at a fifth of zstd's speed, and on a laptop the
// bsdiff streams of a security update were a fifth of its CPU; zstd's
// streams came out about a tenth larger.
func toZstdPatch(patch []byte, zs *zstdEncoders) ([]byte, error) {
	h, err := readHeader(bytes.NewReader(patch), int64(len(patch)))
	if err != nil {
		return nil, err
	}
	streams := [][]byte{
		patch[headerLen : headerLen+h.ctrlLen],
		patch[headerLen+h.ctrlLen : headerLen+h.ctrlLen+h.diffLen],
		patch[headerLen+h.ctrlLen+h.diffLen:],
	}
	out := make([]byte, headerLen, len(patch))
	copy(out, bsdiffZstdMagic)
	binary.LittleEndian.PutUint64(out[24:], uint64(h.newSize))
	for i, s := range streams {
		data, err := bunzip2(s)
		if err != nil {
			return nil, err
		}
		z, err := zs.encodeWindow(data, zstd.SpeedBestCompression, patchStreamWindow)
		if err != nil {
			return nil, err
		}
		if i < 2 {
			binary.LittleEndian.PutUint64(out[8+8*i:], uint64(len(z)))
		}
		out = append(out, z...)
	}
	return out, nil
}
