package diff

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Zstd settings. The window is capped so that a laptop decoding a frame
// needs at most this much memory beyond the dictionary: 8 MiB keeps even a
// file of hundreds of MiB within an update's memory budget (SPEC.md §10),
// and covers all but the largest libraries of a desktop image, whose
// matches beyond 8 MiB back are few.
const (
	zstdMaxWindow = 8 << 20
	zstdDictID    = 1 // raw-content dictionaries need an id; the base is named in the index
)

// MaxDictBase is the largest base a publisher makes a dictionary encoding
// (zstd-dict, gz-zstd-dict) against: a node holds the dictionary whole
// while it decodes, and a 48 MiB laptop budget leaves 24 MiB for data in
// flight (SPEC.md §10).
const MaxDictBase = 16 << 20

// ErrCorruptEncoding is wrapped by errors about encodings that do not decode.
var ErrCorruptEncoding = errors.New("encoding does not decode")

// zstdWindow is the window the publisher compresses n bytes of content
// with, and so the most a node's decoder accepts for them (decodeWindow).
func zstdWindow[N int | int64](n N) N {
	var w N = 1 << 10
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
