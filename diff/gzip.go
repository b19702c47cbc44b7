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
// sides: the publisher holds it, and a laptop holds a base's text as a
// dictionary.
const MaxGunzipped = 32 << 20

// maxGzRatio bounds a gz kind's text relative to its gzip file, so that a
// laptop knows from the sizes alone how much text (as a dictionary, and as
// the zstd window) a decode will hold (DecodeMemory). Debian's man pages
// and changelogs compress 2.5 to 4 times; of 25,438 gzip files in a desktop
// image's /usr/share, 3 (test logs) compress more than 16 times, and those
// are simply sent by other encodings.
const maxGzRatio = 16

// gzTextLimit is the most text the gz kinds accept from a gzip file of n
// bytes: the one rule both the publisher and the node apply.
func gzTextLimit(n int64) int64 { return min(MaxGunzipped, maxGzRatio*max(n, 0)) }

// gzipMagic is the start of a gzip member made by `gzip -n`: deflate, no
// flags, no mtime.
var gzipMagic = []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}

// gunzip returns the text of a gzip object made by `gzip -n`, or false if it
// is not one or its text is over gzTextLimit.
func gunzip(data []byte) ([]byte, bool) {
	return gunzipFrom(bytes.NewReader(data), int64(len(data)))
}

// gunzipFrom is gunzip of the n bytes r reads.
func gunzipFrom(r io.Reader, n int64) ([]byte, bool) {
	var magic [8]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil || !bytes.Equal(magic[:], gzipMagic) {
		return nil, false
	}
	zr, err := gzip.NewReader(io.MultiReader(bytes.NewReader(magic[:]), r))
	if err != nil {
		return nil, false
	}
	zr.Multistream(false)
	limit := gzTextLimit(n)
	out, err := io.ReadAll(io.LimitReader(zr, limit+1))
	if err != nil || int64(len(out)) > limit {
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
	var out bytes.Buffer
	if _, err := gzip9nTo(ctx, bytes.NewReader(text), limit, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// gzip9nTo runs `gzip -9n` with text on its standard input and writes its
// output to w, failing as soon as that passes limit bytes, and returns how
// many it wrote. An error reading text is returned as it is, so a decode's
// ErrCorruptEncoding survives.
func gzip9nTo(ctx context.Context, text io.Reader, limit int64, w io.Writer) (int64, error) {
	path, err := exec.LookPath("gzip")
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoGzip, err)
	}
	in := &errReader{r: text}
	out := &limitWriter{w: w, limit: limit}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "-9n", "-c")
	cmd.Stdin = in
	cmd.Stdout = out
	cmd.Stderr = &limitedBuffer{buf: &stderr, left: 4096}
	err = cmd.Run()
	switch {
	case in.err != nil:
		// gzip compressed a text that ended early: its output is wrong.
		return out.n, in.err
	case err != nil && ctx.Err() != nil:
		return out.n, ctx.Err()
	case err != nil:
		return out.n, fmt.Errorf("gzip -9n: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out.n, nil
}

// errReader remembers its reader's first error other than io.EOF, which
// os/exec would otherwise fold into the child's exit status.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
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
// the text is decoded with zstd (the base's text as dictionary) straight
// into gzip's standard input, and gzip's output goes to w.
func (d *Decoder) decodeGz(ctx context.Context, kind Kind, base, enc *io.SectionReader, size int64, w io.Writer) error {
	var dict []byte
	var baseSize int64
	if kind == KindGzZstdDict {
		baseSize = base.Size()
		var ok bool
		if dict, ok = gunzipFrom(io.NewSectionReader(base, 0, baseSize), baseSize); !ok {
			return fmt.Errorf("%w: base is not a gzip -n file of at most %d bytes of text", ErrCorruptEncoding, gzTextLimit(baseSize))
		}
	}
	text := func(w io.Writer) error {
		tw := &limitWriter{w: w, limit: gzTextLimit(size)}
		// A fresh reader over the encoding, so that a decode run again
		// after its session failed reads it from the start.
		return d.zstdTo(ctx, io.NewSectionReader(enc, 0, enc.Size()), dict, decodeWindow(kind, baseSize, size), tw)
	}
	err := d.gz.gzipInSession(ctx, size, w, text)
	if errors.Is(err, errGzipSession) {
		err = d.gzipAlone(ctx, size, w, text)
	}
	if err != nil && !errors.Is(err, ErrNoGzip) && !errors.Is(err, ErrCorruptEncoding) && ctx.Err() == nil {
		err = fmt.Errorf("%w: %w", ErrCorruptEncoding, err)
	}
	return err
}

// gzipAlone is a gz decode with a gzip of its own.
func (d *Decoder) gzipAlone(ctx context.Context, size int64, w io.Writer, text func(io.Writer) error) error {
	// The zstd decode runs in the goroutine feeding gzip, so its text is
	// never held: the pipe between them is the only buffer.
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(text(pw))
	}()
	n, err := gzip9nTo(ctx, pr, size, w)
	pr.CloseWithError(errors.New("gzip is done")) // unblocks the decode if gzip stopped early
	<-done
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%w: recompressed text is %d bytes, want %d", ErrCorruptEncoding, n, size)
	}
	return nil
}
