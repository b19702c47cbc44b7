package diff

import (
	"bytes"
	"compress/bzip2"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Zstd settings. The window is capped so that a laptop decoding a frame
// needs at most this much memory beyond the dictionary; 32 MiB covers the
// large shared libraries of a desktop image.
const (
	zstdMaxWindow = 32 << 20
	zstdDictID    = 1 // raw-content dictionaries need an id; the base is named in the index
)

// ErrCorruptEncoding is wrapped by errors about encodings that do not decode.
var ErrCorruptEncoding = errors.New("encoding does not decode")

func zstdWindow(n int) int {
	w := 1 << 10
	for w < n && w < zstdMaxWindow {
		w <<= 1
	}
	return w
}

// EncodeZstd compresses data whole, at the strongest level: publishing is
// done once and every laptop saves on the wire.
func EncodeZstd(data []byte) ([]byte, error) {
	return zstdEncode(data, nil)
}

// EncodeZstdDict compresses data with base as a raw-content dictionary, which
// finds the long matches a new version of a file shares with the old one.
func EncodeZstdDict(base, data []byte) ([]byte, error) {
	return zstdEncode(data, base)
}

func zstdEncode(data, dict []byte) ([]byte, error) {
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow(len(data) + len(dict))),
		zstd.WithEncoderCRC(false), // the object's SHA-256 is checked instead
	}
	if dict != nil {
		opts = append(opts, zstd.WithEncoderDictRaw(zstdDictID, dict))
	}
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, make([]byte, 0, len(data)/3)), nil
}

// Decode turns an encoding back into its target, refusing to produce more
// than size bytes. base is the base object's bytes for kinds that need one.
// The caller checks the encoding's hash before and the result's after.
func Decode(ctx context.Context, kind Kind, base []byte, enc io.Reader, size int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch kind {
	case KindZstd, KindZstdDict:
		opts := []zstd.DOption{
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(zstdMaxWindow),
			zstd.WithDecoderMaxMemory(uint64(size) + 1),
		}
		if kind == KindZstdDict {
			opts = append(opts, zstd.WithDecoderDictRaw(zstdDictID, base))
		}
		dec, err := zstd.NewReader(enc, opts...)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrCorruptEncoding, err)
		}
		defer dec.Close()
		var out bytes.Buffer
		if size < 64<<20 {
			out.Grow(int(size))
		}
		n, err := io.Copy(&out, io.LimitReader(dec, size+1))
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrCorruptEncoding, err)
		}
		if n != size {
			return nil, fmt.Errorf("%w: zstd gives %d bytes, want %d", ErrCorruptEncoding, n, size)
		}
		return out.Bytes(), nil
	case KindBsdiffZstd:
		packed, err := io.ReadAll(enc)
		if err != nil {
			return nil, err
		}
		out, err := applyBsdiffZstd(base, packed, size)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorruptEncoding, err)
		}
		return out, nil
	case KindBsdiff:
		patch, err := io.ReadAll(enc)
		if err != nil {
			return nil, err
		}
		out, err := Apply(base, patch, size)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorruptEncoding, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown kind %q", ErrCorruptEncoding, kind)
}

const bszMagic = "BSDZSTD1"

// RepackBsdiff turns a BSDIFF40 patch into the bsdiff-zstd form: a 32-byte
// header ("BSDZSTD1", then the raw lengths of the control and diff streams
// and the new size, as little-endian sign-magnitude int64s like BSDIFF40's)
// and one zstd frame holding control ‖ diff ‖ extra. The diff stream is
// mostly zeros, which zstd's long matches take far better than bzip2.
func RepackBsdiff(patch []byte) ([]byte, error) {
	h, err := parseHeader(patch)
	if err != nil {
		return nil, err
	}
	body := patch[32:]
	var raw bytes.Buffer
	var lens [2]int64
	for i, part := range [][]byte{body[:h.ctrlLen], body[h.ctrlLen : h.ctrlLen+h.diffLen], body[h.ctrlLen+h.diffLen:]} {
		n, err := io.Copy(&raw, io.LimitReader(bzip2.NewReader(bytes.NewReader(part)), 64*h.newSize+1<<20))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorruptPatch, err)
		}
		if i < 2 {
			lens[i] = n
		}
	}
	z, err := zstdEncode(raw.Bytes(), nil)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 32, 32+len(z))
	copy(out, bszMagic)
	binary.LittleEndian.PutUint64(out[8:], uint64(lens[0]))
	binary.LittleEndian.PutUint64(out[16:], uint64(lens[1]))
	binary.LittleEndian.PutUint64(out[24:], uint64(h.newSize))
	return append(out, z...), nil
}

func applyBsdiffZstd(old, packed []byte, size int64) ([]byte, error) {
	if len(packed) < 32 || string(packed[:8]) != bszMagic {
		return nil, fmt.Errorf("%w: not a bsdiff-zstd patch", ErrCorruptPatch)
	}
	ctrlLen, diffLen, newSize := offtin(packed[8:]), offtin(packed[16:]), offtin(packed[24:])
	// Bounds that follow from the format: the diff and extra streams
	// together hold exactly newSize bytes, and there are at most
	// newSize+1024 control triples.
	switch {
	case newSize != size || size < 0 || size > MaxPatchOutput:
		return nil, fmt.Errorf("%w: header says %d bytes, manifest %d", ErrCorruptPatch, newSize, size)
	case ctrlLen < 0 || ctrlLen > 24*(size+1025) || diffLen < 0 || diffLen > size:
		return nil, fmt.Errorf("%w: stream lengths %d, %d out of range", ErrCorruptPatch, ctrlLen, diffLen)
	}
	limit := ctrlLen + 2*size
	dec, err := zstd.NewReader(bytes.NewReader(packed[32:]), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderMaxMemory(uint64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptPatch, err)
	}
	defer dec.Close()
	raw, err := io.ReadAll(io.LimitReader(dec, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptPatch, err)
	}
	if int64(len(raw)) > limit || int64(len(raw)) < ctrlLen+diffLen {
		return nil, fmt.Errorf("%w: streams hold %d bytes", ErrCorruptPatch, len(raw))
	}
	return applyStreams(old, bytes.NewReader(raw[:ctrlLen]), bytes.NewReader(raw[ctrlLen:ctrlLen+diffLen]), bytes.NewReader(raw[ctrlLen+diffLen:]), size)
}
