package diff

import (
	"errors"
	"fmt"
	"sync"

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
	enc, err := zstd.NewWriter(nil, zstdOptions(level, dict, zstdWindow(len(data)+len(dict)))...)
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, make([]byte, 0, len(data)/3)), nil
}

func zstdOptions(level zstd.EncoderLevel, dict []byte, window int) []zstd.EOption {
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(window),
		zstd.WithEncoderCRC(false), // the object's SHA-256 is checked instead
	}
	if dict != nil {
		opts = append(opts, zstd.WithEncoderDictRaw(zstdDictID, dict))
	}
	return opts
}

// zstdEncoders reuses encoders across the objects of one publish. A new
// encoder at the strongest level allocates and clears 34 MB of match
// tables, which for the hundreds of small files of a security update cost
// more than compressing them (a third of the encoding phase's CPU).
//
// Pooled encoders have the largest window, so their frames match those of
// zstdEncodeLevel's right-sized one: a frame of 1 KiB to the window is
// written as a single segment whose window is its content size, and the
// window descriptor of a larger one is the same 8 MiB either way. Content
// of 1 KiB or less gets a frame with a window descriptor, which an encoder
// with a large window would make 2 KiB for exactly 1 KiB, over what a node
// allows (decodeWindow); those get encoders of the smallest window.
type zstdEncoders struct {
	mu    sync.Mutex
	pools map[zstdEncoderKind]*sync.Pool
}

type zstdEncoderKind struct {
	level  zstd.EncoderLevel
	dict   bool // an encoder's kind of match finder is fixed by whether it has a dictionary
	window int
}

// encode is zstdEncodeLevel on a pooled encoder.
func (z *zstdEncoders) encode(data, dict []byte, level zstd.EncoderLevel) ([]byte, error) {
	window := zstdMaxWindow
	if w := zstdWindow(len(data) + len(dict)); w <= zstd.MinWindowSize {
		window = w
	}
	return z.encodeWith(data, dict, level, window)
}

// encodeWindow compresses data without a dictionary in frames of at most
// window (a power of two, over zstd.MinWindowSize).
func (z *zstdEncoders) encodeWindow(data []byte, level zstd.EncoderLevel, window int) ([]byte, error) {
	if w := zstdWindow(len(data)); w <= zstd.MinWindowSize {
		window = w
	}
	return z.encodeWith(data, nil, level, window)
}

func (z *zstdEncoders) encodeWith(data, dict []byte, level zstd.EncoderLevel, window int) ([]byte, error) {
	pool := z.pool(zstdEncoderKind{level, dict != nil, window})
	enc, _ := pool.Get().(*zstd.Encoder)
	if enc == nil {
		var err error
		if enc, err = zstd.NewWriter(nil, zstdOptions(level, dict, window)...); err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
	} else if dict != nil {
		if err := enc.ResetWithOptions(nil, zstd.WithEncoderDictRaw(zstdDictID, dict)); err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
	}
	out := enc.EncodeAll(data, make([]byte, 0, len(data)/3))
	pool.Put(enc)
	return out, nil
}

func (z *zstdEncoders) pool(k zstdEncoderKind) *sync.Pool {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.pools == nil {
		z.pools = map[zstdEncoderKind]*sync.Pool{}
	}
	p := z.pools[k]
	if p == nil {
		// A sync.Pool lets the collector take idle encoders back, so what
		// the pool holds follows the work in hand.
		p = &sync.Pool{}
		z.pools[k] = p
	}
	return p
}
