package diff

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
)

// Debian compresses man pages and changelogs with `gzip -9n`, so a one-line
// change in the text changes the whole compressed file, and a patch between
// the compressed forms is nearly as large as the file. The gz kinds diff the
// uncompressed texts instead and let the node recompress with GNU gzip, whose
// deflate output has been byte-for-byte stable for decades. The publisher
// offers them only after checking that recompression reproduces the object
// exactly, and the node checks the result's hash like any other, so a node
// whose gzip differs merely falls back to the next encoding.

// MaxGunzipped bounds the uncompressed text the gz kinds handle, on both
// sides: a laptop holds it, the base's text and the output at once.
const MaxGunzipped = 32 << 20

// gzipMagic is the start of a gzip member made by `gzip -n`: deflate, no
// flags, no mtime.
var gzipMagic = []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}

// gunzip returns the text of a gzip object made by `gzip -n`, or false if it
// is not one or its text is over MaxGunzipped.
func gunzip(data []byte) ([]byte, bool) {
	if !bytes.HasPrefix(data, gzipMagic) {
		return nil, false
	}
	r, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, false
	}
	r.Multistream(false)
	out, err := io.ReadAll(io.LimitReader(r, MaxGunzipped+1))
	if err != nil || len(out) > MaxGunzipped {
		return nil, false
	}
	return out, true
}

// ErrNoGzip is wrapped when a gz encoding cannot be decoded because this
// node has no gzip program.
var ErrNoGzip = errors.New("no gzip program to recompress with")

// gzip9n compresses text as `gzip -9n` does, refusing output over limit
// bytes.
func gzip9n(ctx context.Context, text []byte, limit int64) ([]byte, error) {
	path, err := exec.LookPath("gzip")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoGzip, err)
	}
	cmd := exec.CommandContext(ctx, path, "-9n", "-c")
	cmd.Stdin = bytes.NewReader(text)
	var out, stderr bytes.Buffer
	cmd.Stdout = &limitedBuffer{buf: &out, left: limit + 1}
	cmd.Stderr = &limitedBuffer{buf: &stderr, left: 4096}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("gzip -9n: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	if int64(out.Len()) > limit {
		return nil, fmt.Errorf("gzip -9n gives more than %d bytes", limit)
	}
	return out.Bytes(), nil
}

// limitedBuffer keeps at most left bytes and silently drops the rest, so a
// misbehaving child cannot fill memory; the caller sees the overflow by
// length.
type limitedBuffer struct {
	buf  *bytes.Buffer
	left int64
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	l.buf.Write(p)
	l.left -= int64(len(p))
	return n, nil
}

// reproducibleGzip returns the text of data if data is exactly what
// `gzip -9n` makes of it on this machine.
func reproducibleGzip(ctx context.Context, data []byte) ([]byte, bool) {
	text, ok := gunzip(data)
	if !ok {
		return nil, false
	}
	again, err := gzip9n(ctx, text, int64(len(data)))
	if err != nil || !bytes.Equal(again, data) {
		return nil, false
	}
	return text, true
}

// decodeGz turns a gz-zstd or gz-zstd-dict encoding back into its target:
// the text is decoded with zstd (the base's text as dictionary), then
// recompressed.
func decodeGz(ctx context.Context, kind Kind, base []byte, enc io.Reader, size int64) ([]byte, error) {
	var dict []byte
	if kind == KindGzZstdDict {
		var ok bool
		if dict, ok = gunzip(base); !ok {
			return nil, fmt.Errorf("%w: base is not a gzip -n file", ErrCorruptEncoding)
		}
	}
	text, err := zstdDecode(enc, dict, MaxGunzipped)
	if err != nil {
		return nil, err
	}
	out, err := gzip9n(ctx, text, size)
	if err != nil {
		return nil, err
	}
	if int64(len(out)) != size {
		return nil, fmt.Errorf("%w: recompressed text is %d bytes, want %d", ErrCorruptEncoding, len(out), size)
	}
	return out, nil
}
