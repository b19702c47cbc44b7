package diff

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/dsnet/compress/bzip2"
)

// maxEmptyTriples bounds control triples that write nothing. Every other
// triple writes at least one byte, so a patch has at most its output size
// plus this many triples: a control stream of empty triples (a few bytes
// of bzip2 can expand to gigabytes of them) cannot keep the applier busy.
const maxEmptyTriples = 1024

// patchChunk is the most the applier holds of the old file, the diff
// stream or the output at once: large enough that a triple costs a handful
// of system calls, small enough to be noise beside the bzip2 decoders.
const patchChunk = 64 << 10

// header is a BSDIFF40 patch's fixed 32-byte header, or a bsdiff-zstd
// patch's, which is the same but for its magic.
type header struct {
	ctrlLen  int64 // compressed length of the control stream
	diffLen  int64 // compressed length of the diff stream
	extraLen int64 // the rest of the patch: the extra stream
	newSize  int64 // size of the output
}

// readHeader reads a BSDIFF40 header and checks it against the patch's own
// length; the output size is checked by the caller, which knows the limit.
func readHeader(patch io.ReaderAt, patchLen int64) (header, error) {
	return readHeaderOf(patch, patchLen, bsdiffMagic)
}

// readHeaderOf is readHeader for a patch whose magic must be magic.
func readHeaderOf(patch io.ReaderAt, patchLen int64, magic string) (header, error) {
	var h header
	if patchLen < headerLen {
		return h, fmt.Errorf("patch header: %d bytes, want %d: %w", max(patchLen, 0), headerLen, ErrCorruptPatch)
	}
	var b [headerLen]byte
	if _, err := patch.ReadAt(b[:], 0); err != nil {
		return h, fmt.Errorf("patch header: %w", err)
	}
	if string(b[:8]) != magic {
		return h, fmt.Errorf("patch header: magic %q, want %q: %w", b[:8], magic, ErrCorruptPatch)
	}
	h.ctrlLen, h.diffLen, h.newSize = offtin(b[8:]), offtin(b[16:]), offtin(b[24:])
	body := patchLen - headerLen
	switch {
	case h.ctrlLen < 0 || h.diffLen < 0 || h.newSize < 0:
		return h, fmt.Errorf("patch header: negative field (control %d, diff %d, new size %d): %w", h.ctrlLen, h.diffLen, h.newSize, ErrCorruptPatch)
	case h.ctrlLen > body || h.diffLen > body-h.ctrlLen:
		return h, fmt.Errorf("patch header: control %d + diff %d bytes exceed the %d bytes after the header: %w", h.ctrlLen, h.diffLen, body, ErrCorruptPatch)
	}
	h.extraLen = body - h.ctrlLen - h.diffLen
	return h, nil
}

// checkSize refuses an output size before anything is allocated for it.
func checkSize(newSize int64) error {
	switch {
	case newSize < 0:
		return fmt.Errorf("declared new size %d is negative: %w", newSize, ErrCorruptPatch)
	case newSize > MaxPatchOutput:
		return fmt.Errorf("new size %d is over the %d-byte limit: %w", newSize, MaxPatchOutput, ErrTooLarge)
	}
	return nil
}

// openPatch checks a patch's header, of the given magic, against the size
// its caller declares.
func openPatch(patch io.ReaderAt, patchLen, newSize int64, magic string) (header, error) {
	if err := checkSize(newSize); err != nil {
		return header{}, err
	}
	h, err := readHeaderOf(patch, patchLen, magic)
	if err != nil {
		return h, err
	}
	if h.newSize != newSize {
		return h, fmt.Errorf("patch header: new size %d, but %d declared: %w", h.newSize, newSize, ErrCorruptPatch)
	}
	return h, nil
}

// Apply applies a BSDIFF40 patch to old and returns the new file, which
// must be exactly newSize bytes: the size the signed manifest declares,
// at most MaxPatchOutput. It is Patch with everything in memory, for
// callers that hold the files anyway (tests, the publisher's checks).
func Apply(old, patch []byte, newSize int64) ([]byte, error) {
	h, err := openPatch(bytes.NewReader(patch), int64(len(patch)), newSize, bsdiffMagic)
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	// Allocated only now that the size is known to be the declared one.
	out := bytes.NewBuffer(make([]byte, 0, newSize))
	if err := h.apply(context.Background(), bytes.NewReader(old), int64(len(old)), bytes.NewReader(patch), out, bzip2Streams); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	return out.Bytes(), nil
}

// Patch applies the BSDIFF40 patch of patchLen bytes to the old file of
// oldLen bytes and writes the new file, exactly newSize bytes (at most
// MaxPatchOutput), to w.
//
// Patch is safe on any input. Errors about the patch wrap ErrCorruptPatch
// and say what is wrong and where; a newSize over the limit wraps
// ErrTooLarge. It never panics, its work is linear in newSize and the
// patch's length, and its memory is fixed: the three bzip2 decoders and a
// few chunk buffers, whatever the sizes (see DecodeMemory). It checks each
// control triple before acting on it, so on an error w has received a
// prefix of what the patch describes: callers write into a staging file
// they discard unless the output's hash matches. It does not authenticate
// anything: callers check the patch's SHA-256 before and the output's after.
func Patch(ctx context.Context, old io.ReaderAt, oldLen int64, patch io.ReaderAt, patchLen, newSize int64, w io.Writer) error {
	h, err := openPatch(patch, patchLen, newSize, bsdiffMagic)
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	if err := h.apply(ctx, old, oldLen, patch, w, bzip2Streams); err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	return nil
}

// apply runs a patch whose header is checked, vetting every control triple
// before acting on it: lengths non-negative and within the output, old-file
// reads and seeks within the old file, at most maxEmptyTriples that write
// nothing, and the control stream holding exactly the triples the output
// needs, within the header's control length. The diff and extra streams are
// read no further than the triples take, as Debian's bspatch does.
//
// open decompresses each of the three streams (bzip2 for BSDIFF40, zstd
// for bsdiff-zstd); the readers it returns are done with when apply
// returns, and close releases them.
func (h header) apply(ctx context.Context, old io.ReaderAt, oldLen int64, patch io.ReaderAt, w io.Writer, open streamOpener) error {
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	section := func(name string, off, n int64) (io.Reader, error) {
		r, closeFn, err := open(io.NewSectionReader(patch, headerLen+off, n))
		if err != nil {
			return nil, fmt.Errorf("%s stream: %v: %w", name, err, ErrCorruptPatch)
		}
		closers = append(closers, closeFn)
		return r, nil
	}
	ctrl, err := section("control", 0, h.ctrlLen)
	if err != nil {
		return err
	}
	diffs, err := section("diff", h.ctrlLen, h.diffLen)
	if err != nil {
		return err
	}
	extras, err := section("extra", h.ctrlLen+h.diffLen, h.extraLen)
	if err != nil {
		return err
	}
	// Many triples write a few bytes each; one write per chunk keeps a
	// pipe or a staging file from seeing them one by one.
	bw := bufio.NewWriterSize(w, patchChunk)
	ob := oldReader{r: old, size: oldLen, buf: make([]byte, patchChunk)}
	buf := make([]byte, patchChunk)
	var (
		tr             [24]byte
		newpos, oldpos int64
		n, empty       int
	)
	for ; newpos < h.newSize; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := io.ReadFull(ctrl, tr[:]); err != nil {
			return fmt.Errorf("control stream: ends after %d triples, at output byte %d of %d: %v: %w", n, newpos, h.newSize, err, ErrCorruptPatch)
		}
		add, copyLen, seek := offtin(tr[0:]), offtin(tr[8:]), offtin(tr[16:])
		switch {
		case add < 0 || copyLen < 0:
			return fmt.Errorf("control triple %d: negative length (add %d, copy %d): %w", n, add, copyLen, ErrCorruptPatch)
		case add > h.newSize-newpos || copyLen > h.newSize-newpos-add:
			return fmt.Errorf("control triple %d: writes %d+%d bytes at output byte %d, past the new size %d: %w", n, add, copyLen, newpos, h.newSize, ErrCorruptPatch)
		case add > oldLen-oldpos:
			return fmt.Errorf("control triple %d: adds %d old bytes from old byte %d, past the old file's %d: %w", n, add, oldpos, oldLen, ErrCorruptPatch)
		}
		if add == 0 && copyLen == 0 {
			if empty++; empty > maxEmptyTriples {
				return fmt.Errorf("control stream: more than %d triples that write nothing: %w", maxEmptyTriples, ErrCorruptPatch)
			}
		}
		for left := add; left > 0; {
			k := min(left, patchChunk)
			if _, err := io.ReadFull(diffs, buf[:k]); err != nil {
				return fmt.Errorf("diff stream: ends at output byte %d (control triple %d): %v: %w", newpos, n, err, ErrCorruptPatch)
			}
			o, err := ob.at(oldpos, k)
			if err != nil {
				return err
			}
			for i := range buf[:k] {
				buf[i] += o[i]
			}
			if _, err := bw.Write(buf[:k]); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			left, newpos, oldpos = left-k, newpos+k, oldpos+k
		}
		for left := copyLen; left > 0; {
			k := min(left, patchChunk)
			if _, err := io.ReadFull(extras, buf[:k]); err != nil {
				return fmt.Errorf("extra stream: ends at output byte %d (control triple %d): %v: %w", newpos, n, err, ErrCorruptPatch)
			}
			if _, err := bw.Write(buf[:k]); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			left, newpos = left-k, newpos+k
		}
		// oldpos is within [0, oldLen] here, so neither bound overflows.
		if seek < -oldpos || seek > oldLen-oldpos {
			return fmt.Errorf("control triple %d: seek %d from old byte %d leaves the old file's %d bytes: %w", n, seek, oldpos, oldLen, ErrCorruptPatch)
		}
		oldpos += seek
	}
	// One byte is enough to tell: anything after the last triple the output
	// needs is not a control stream (and could be a bomb).
	switch k, err := ctrl.Read(tr[:1]); {
	case k > 0:
		return fmt.Errorf("control stream: more data after the %d triples that make the output: %w", n, ErrCorruptPatch)
	case err != io.EOF:
		return fmt.Errorf("control stream: after %d triples: %v: %w", n, err, ErrCorruptPatch)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// streamOpener decompresses one stream of a patch. The reader's errors
// about the data are reported as the patch's corruption.
type streamOpener func(r io.Reader) (io.Reader, func(), error)

// bzip2Streams opens BSDIFF40's streams. It decodes with
// github.com/dsnet/compress rather than the standard library: on a
// malformed block, decoders disagree about the bytes they return before the
// block's checksum is due, and the patches this applier has accepted since
// before it replaced go-bsdiff's (which uses dsnet) must keep meaning the
// same output. Reading the control stream to its clean end verifies the
// checksums of every block the triples came from.
func bzip2Streams(r io.Reader) (io.Reader, func(), error) {
	zr, err := bzip2.NewReader(r, nil)
	if err != nil {
		return nil, nil, err
	}
	return zr, func() {}, nil
}

// oldReader reads the old file through a one-chunk cache: bsdiff's
// triples mostly walk the old file forward in small steps, and a pread per
// triple would cost more than the adding.
type oldReader struct {
	r          io.ReaderAt
	size       int64
	buf        []byte
	start, end int64 // the cached bytes are old[start:end]
}

// at returns old[off:off+n], n at most a chunk; the caller has checked
// that the range is within the old file.
func (o *oldReader) at(off, n int64) ([]byte, error) {
	if off < o.start || off+n > o.end {
		k, err := o.r.ReadAt(o.buf[:min(int64(len(o.buf)), o.size-off)], off)
		if int64(k) < n {
			return nil, fmt.Errorf("old file: %d bytes at %d: %w", n, off, noEOF(err))
		}
		o.start, o.end = off, off+int64(k)
	}
	return o.buf[off-o.start : off-o.start+n], nil
}

// noEOF is err with a read that ended early named for what it is: the old
// file is shorter than its stated size.
func noEOF(err error) error {
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
