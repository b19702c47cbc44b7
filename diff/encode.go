package diff

import (
	"bytes"
	"context"
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
	return zstdEncodeLevel(data, dict, zstd.SpeedBestCompression)
}

func zstdEncodeLevel(data, dict []byte, level zstd.EncoderLevel) ([]byte, error) {
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(level),
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
		var dict []byte
		if kind == KindZstdDict {
			dict = base
		}
		out, err := zstdDecode(enc, dict, size)
		if err != nil {
			return nil, err
		}
		if int64(len(out)) != size {
			return nil, fmt.Errorf("%w: zstd gives %d bytes, want %d", ErrCorruptEncoding, len(out), size)
		}
		return out, nil
	case KindGzZstd, KindGzZstdDict:
		return decodeGz(ctx, kind, base, enc, size)
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

// zstdDecode decodes one zstd stream, with dict as a raw-content dictionary
// if not nil, refusing to produce more than max bytes.
func zstdDecode(enc io.Reader, dict []byte, limit int64) ([]byte, error) {
	opts := []zstd.DOption{
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
		zstd.WithDecoderMaxMemory(uint64(limit) + 1),
	}
	if dict != nil {
		opts = append(opts, zstd.WithDecoderDictRaw(zstdDictID, dict))
	}
	dec, err := zstd.NewReader(enc, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %w", ErrCorruptEncoding, err)
	}
	defer dec.Close()
	var out bytes.Buffer
	if limit < 64<<20 {
		out.Grow(int(limit))
	}
	n, err := io.Copy(&out, io.LimitReader(dec, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %w", ErrCorruptEncoding, err)
	}
	if n > limit {
		return nil, fmt.Errorf("%w: zstd gives more than %d bytes", ErrCorruptEncoding, limit)
	}
	return out.Bytes(), nil
}
