package diff

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/peerup/peerup/blobstore"

	"github.com/klauspost/compress/zstd"
)

// Decoder decodes encodings into their targets for one pull, streaming:
// the output goes to a writer in bounded chunks and the base is read where
// it lies, so a laptop's memory does not grow with the files it updates.
//
// It keeps a few zstd decoders for reuse, since making one allocates its
// tables afresh and a security update brings hundreds of small files. Only
// decoders whose last window was small go back to the pool: a decoder keeps
// its window buffer, and idle memory is memory no budget accounts for.
// A Decoder is safe for concurrent use; Close releases the pool.
type Decoder struct {
	mu   sync.Mutex
	idle []*zstd.Decoder
	gz   gzipSessions
}

const (
	// poolSize is one idle decoder per fetch worker of a pull.
	poolSize = 4
	// poolMaxWindow bounds the windows of pooled decoders, so that an idle
	// pool holds at most about poolSize MiB and change.
	poolMaxWindow = 1 << 20
)

// NewDecoder returns a Decoder with an empty pool.
func NewDecoder() *Decoder { return &Decoder{} }

// Close drops the pooled decoders and ends the shared gzip. The Decoder
// stays usable.
func (d *Decoder) Close() {
	d.gz.close()
	d.mu.Lock()
	idle := d.idle
	d.idle = nil
	d.mu.Unlock()
	for _, z := range idle {
		z.Close()
	}
}

// DecodeTo turns an encoding back into its target and writes it to w: at
// most size bytes, and exactly size unless it fails. base is the base
// object for kinds that need one (nil otherwise) and enc the encoding's
// bytes; both are read in place, through ReadAt.
//
// The caller checks the encoding's hash before and the output's after, and
// writes into a staging file it discards on error: a failing decode may
// have written a prefix. Errors about the encoding wrap ErrCorruptEncoding
// (and, for patches, ErrCorruptPatch or ErrTooLarge); a gz kind on a node
// without gzip wraps ErrNoGzip.
//
// The memory it holds is at most DecodeMemory(kind, base size, size), which
// it enforces on the zstd window.
func (d *Decoder) DecodeTo(ctx context.Context, kind Kind, base, enc *io.SectionReader, size int64, w io.Writer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if kind.needsBase() && base == nil {
		return fmt.Errorf("%w: %s encoding without its base", ErrCorruptEncoding, kind)
	}
	var baseSize int64
	if base != nil {
		baseSize = base.Size()
	}
	switch kind {
	case KindZstd, KindZstdDict:
		var dict []byte
		if kind == KindZstdDict {
			// A raw dictionary is random access by design: it must be in
			// memory, which DecodeMemory counts.
			dict = make([]byte, baseSize)
			if n, err := base.ReadAt(dict, 0); int64(n) < baseSize {
				return fmt.Errorf("read base: %w", noEOF(err))
			}
		}
		lw := &limitWriter{w: w, limit: size}
		if err := d.zstdTo(ctx, enc, dict, decodeWindow(kind, baseSize, size), lw); err != nil {
			return err
		}
		if lw.n != size {
			return fmt.Errorf("%w: zstd gives %d bytes, want %d", ErrCorruptEncoding, lw.n, size)
		}
		return nil
	case KindGzZstd, KindGzZstdDict:
		return d.decodeGz(ctx, kind, base, enc, size, w)
	case KindBsdiff:
		if err := Patch(ctx, base, baseSize, enc, enc.Size(), size, w); err != nil {
			return fmt.Errorf("%w: %w", ErrCorruptEncoding, err)
		}
		return nil
	case KindBsdiffZstd:
		if err := d.patchZstd(ctx, base, baseSize, enc, size, w); err != nil {
			return fmt.Errorf("%w: %w", ErrCorruptEncoding, err)
		}
		return nil
	}
	return fmt.Errorf("%w: unknown kind %q", ErrCorruptEncoding, kind)
}

// patchZstd applies a bsdiff-zstd patch: BSDIFF40's checks and triples,
// its streams read by pooled zstd decoders whose windows are held to
// patchStreamWindow.
func (d *Decoder) patchZstd(ctx context.Context, base io.ReaderAt, baseSize int64, enc *io.SectionReader, size int64, w io.Writer) error {
	h, err := openPatch(enc, enc.Size(), size, bsdiffZstdMagic)
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	open := func(r io.Reader) (io.Reader, func(), error) {
		z, err := d.get()
		if err != nil {
			return nil, nil, err
		}
		if err := z.ResetWithOptions(blobstore.ContextReader(ctx, r), zstd.WithDecoderMaxWindow(patchStreamWindow), zstd.WithDecoderDictDelete(zstdDictID)); err != nil {
			d.put(z, patchStreamWindow)
			return nil, nil, err
		}
		return z, func() { d.put(z, patchStreamWindow) }, nil
	}
	if err := h.apply(ctx, base, baseSize, enc, w, open); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("diff: %w", err)
	}
	return nil
}

// Memory a decode holds beyond what DecodeMemory derives from the sizes,
// measured with TestDecodeMemoryCoversDecode and rounded up:
const (
	// bzip2Memory is one github.com/dsnet/compress bzip2 reader at level 9:
	// the 900 kB block, its inverse-BWT permutation (4 bytes a byte) and
	// tables, about 4.6 MB. A patch has three streams open at once.
	bzip2Memory = 5 << 20
	// bzip2Tables is the part of bzip2Memory that does not scale with the
	// stream's level (bzlevel.go): prefix and move-to-front tables.
	bzip2Tables = 256 << 10
	// zstdOverhead is a streaming zstd decoder's fixed part: its block
	// buffers, literal and sequence tables, the copy buffers that feed it
	// and drain it, and the runtime's rounding of the window's allocation
	// (a 64 MiB target's 32 MiB window measured 36 MiB of heap in all).
	zstdOverhead = 4 << 20
	// GzipProcessMemory is one gzip child process (its RSS, not this
	// heap: the laptop pays for it all the same) and the pipes to it. A
	// Decoder runs at most MaxGzipProcesses, shared by its gz decodes.
	GzipProcessMemory = 2 << 20
	// chunkMemory is the applier's chunk buffers and the writer feeding w.
	chunkMemory = 4 * patchChunk
	// patchStreamMemory is one streaming zstd decoder of a bsdiff-zstd
	// stream, whose window is at most patchStreamWindow: the window, a
	// block and its literals and sequences (three measured 2.3 MiB).
	patchStreamMemory = 1 << 20
)

// DecodeMemory estimates the most memory DecodeTo holds while turning an
// encoding of kind into a target of size bytes from a base of baseSize
// bytes, so that a puller can keep concurrent decodes within a budget and
// fetch a target whole when its encoding would not fit.
//
// The output is streamed, so size matters only through the zstd window,
// which the publisher sets to the content it compresses (zstdWindow) and
// DecodeTo refuses to exceed. A raw zstd dictionary is held whole: the
// base, or for gz-zstd-dict the base's text, at most gzTextLimit of it.
// bsdiff holds three bzip2 decoders whatever the sizes, bsdiff-zstd three
// zstd decoders of small windows. The gz kinds' gzip
// is not counted: a Decoder's gz decodes share at most MaxGzipProcesses,
// of GzipProcessMemory each.
func DecodeMemory(kind Kind, baseSize, size int64) int64 {
	window := decodeWindow(kind, baseSize, size)
	ring := window + 2*min(window, 128<<10) // the decoder's history ring
	switch kind {
	case KindZstd:
		return ring + zstdOverhead
	case KindZstdDict:
		return baseSize + ring + zstdOverhead
	case KindGzZstd:
		return ring + zstdOverhead
	case KindGzZstdDict:
		return gzTextLimit(baseSize) + ring + zstdOverhead
	case KindBsdiff:
		return 3*bzip2Memory + chunkMemory
	case KindBsdiffZstd:
		return 3*patchStreamMemory + chunkMemory
	}
	return 0
}

// decodeWindow is the largest zstd window a decode accepts: what the
// publisher's encoder chooses for the content it compressed (the target, or
// its text, plus any dictionary), so an honest encoding always fits.
func decodeWindow(kind Kind, baseSize, size int64) int64 {
	switch kind {
	case KindZstd:
		return zstdWindow(size)
	case KindZstdDict:
		return zstdWindow(size + baseSize)
	case KindGzZstd:
		return zstdWindow(gzTextLimit(size))
	case KindGzZstdDict:
		return zstdWindow(gzTextLimit(size) + gzTextLimit(baseSize))
	}
	return 0
}

// zstdTo decodes one zstd stream from enc into w, with dict as a
// raw-content dictionary if not nil, refusing windows over window bytes.
// It does not bound the output: w does.
func (d *Decoder) zstdTo(ctx context.Context, enc io.Reader, dict []byte, window int64, w io.Writer) error {
	z, err := d.get()
	if err != nil {
		return err
	}
	// The pool takes the decoder back only after it has dropped its
	// references to enc and dict, which belong to this call.
	defer d.put(z, window)
	dictOpt := zstd.WithDecoderDictDelete(zstdDictID)
	if dict != nil {
		dictOpt = zstd.WithDecoderDictRaw(zstdDictID, dict)
	}
	if err := z.ResetWithOptions(blobstore.ContextReader(ctx, enc), zstd.WithDecoderMaxWindow(uint64(max(window, zstd.MinWindowSize))), dictOpt); err != nil {
		return fmt.Errorf("%w: zstd: %w", ErrCorruptEncoding, err)
	}
	if _, err := z.WriteTo(w); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: zstd: %w", ErrCorruptEncoding, err)
	}
	return nil
}

func (d *Decoder) get() (*zstd.Decoder, error) {
	d.mu.Lock()
	if n := len(d.idle); n > 0 {
		z := d.idle[n-1]
		d.idle = d.idle[:n-1]
		d.mu.Unlock()
		return z, nil
	}
	d.mu.Unlock()
	z, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1), // no goroutines of its own: the pull has its workers
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return z, nil
}

func (d *Decoder) put(z *zstd.Decoder, window int64) {
	if err := z.ResetWithOptions(nil, zstd.WithDecoderDictDelete(zstdDictID)); err != nil || window > poolMaxWindow {
		z.Close()
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.idle) >= poolSize {
		z.Close()
		return
	}
	d.idle = append(d.idle, z)
}

// limitWriter passes at most limit bytes to w and fails the write that
// would pass more, so a decode cannot produce more than its target's size.
type limitWriter struct {
	w        io.Writer
	limit, n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.limit-l.n {
		return 0, fmt.Errorf("output over the declared %d bytes", l.limit)
	}
	k, err := l.w.Write(p)
	l.n += int64(k)
	return k, err
}
