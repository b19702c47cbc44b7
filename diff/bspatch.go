package diff

import (
	"bytes"
	"fmt"
	"io"

	"github.com/dsnet/compress/bzip2"
	"github.com/gabstv/go-bsdiff/pkg/bspatch"
)

// maxEmptyTriples bounds control triples that write nothing. Every other
// triple writes at least one byte, so a patch has at most its output size
// plus this many triples: a control stream of empty triples (a few bytes
// of bzip2 can expand to gigabytes of them) cannot keep the applier busy.
const maxEmptyTriples = 1024

// header is a BSDIFF40 patch's fixed 32-byte header.
type header struct {
	ctrlLen int64 // compressed length of the control stream
	diffLen int64 // compressed length of the diff stream
	newSize int64 // size of the output
}

// parseHeader reads the header and checks it against the patch's own
// length; the output size is checked by the caller, which knows the limit.
func parseHeader(patch []byte) (header, error) {
	var h header
	if len(patch) < headerLen {
		return h, fmt.Errorf("patch header: %d bytes, want %d: %w", len(patch), headerLen, ErrCorruptPatch)
	}
	if string(patch[:8]) != bsdiffMagic {
		return h, fmt.Errorf("patch header: magic %q, want %q: %w", patch[:8], bsdiffMagic, ErrCorruptPatch)
	}
	h.ctrlLen, h.diffLen, h.newSize = offtin(patch[8:]), offtin(patch[16:]), offtin(patch[24:])
	body := int64(len(patch) - headerLen)
	switch {
	case h.ctrlLen < 0 || h.diffLen < 0 || h.newSize < 0:
		return h, fmt.Errorf("patch header: negative field (control %d, diff %d, new size %d): %w", h.ctrlLen, h.diffLen, h.newSize, ErrCorruptPatch)
	case h.ctrlLen > body || h.diffLen > body-h.ctrlLen:
		return h, fmt.Errorf("patch header: control %d + diff %d bytes exceed the %d bytes after the header: %w", h.ctrlLen, h.diffLen, body, ErrCorruptPatch)
	}
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

// Apply applies a BSDIFF40 patch to old and returns the new file, which
// must be exactly newSize bytes: the size the signed manifest declares,
// at most MaxPatchOutput.
//
// Apply is safe on any input. Errors about the patch wrap ErrCorruptPatch
// and say what is wrong and where; a newSize over the limit wraps
// ErrTooLarge. It never panics, its work is linear in newSize and the
// patch's length, and it allocates newSize bytes plus the bzip2 decoders'
// fixed buffers. It does not authenticate anything: callers check the
// patch's SHA-256 before and the output's after.
func Apply(old, patch []byte, newSize int64) ([]byte, error) {
	if err := checkSize(newSize); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	h, err := parseHeader(patch)
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	if h.newSize != newSize {
		return nil, fmt.Errorf("diff: patch header: new size %d, but %d declared: %w", h.newSize, newSize, ErrCorruptPatch)
	}
	out, err := apply(old, patch, h)
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	return out, nil
}

// apply runs the library's bspatch on a patch whose header is checked,
// after checkControl has vetted every control triple the library will act
// on. The library panics on negative lengths and, fed a stream of empty
// triples, loops for as long as the stream lasts; recover is the last line
// of defence against whatever else it does not check.
func apply(old, patch []byte, h header) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, fmt.Errorf("bspatch panicked: %v: %w", p, ErrCorruptPatch)
		}
	}()
	if err := checkControl(old, patch, h); err != nil {
		return nil, err
	}
	out, err = bspatch.Bytes(old, patch)
	if err != nil {
		return nil, fmt.Errorf("bspatch: %v: %w", err, ErrCorruptPatch)
	}
	if int64(len(out)) != h.newSize {
		return nil, fmt.Errorf("bspatch wrote %d bytes, want %d: %w", len(out), h.newSize, ErrCorruptPatch)
	}
	return out, nil
}

// checkControl streams the control triples the library will read and
// refuses the patch unless every one is sound: lengths non-negative and
// within the output, old-file reads and seeks within the old file, at most
// maxEmptyTriples that write nothing, and the stream holding exactly the
// triples the output needs, within the header's control length.
//
// It decodes with the library's own bzip2 decoder (github.com/dsnet/compress):
// on a malformed block, decoders disagree about the bytes they return before
// the block's checksum is due, and only the same decoder is sure to see the
// triples the library will act on. Reading to the stream's clean end then
// verifies the checksums of every block the triples came from.
func checkControl(old, patch []byte, h header) error {
	zr, err := bzip2.NewReader(bytes.NewReader(patch[headerLen:headerLen+h.ctrlLen]), nil)
	if err != nil {
		return fmt.Errorf("control stream: %v: %w", err, ErrCorruptPatch)
	}
	oldLen := int64(len(old))
	var (
		buf            [24]byte
		newpos, oldpos int64
		n, empty       int
	)
	for ; newpos < h.newSize; n++ {
		if _, err := io.ReadFull(zr, buf[:]); err != nil {
			return fmt.Errorf("control stream: ends after %d triples, at output byte %d of %d: %v: %w", n, newpos, h.newSize, err, ErrCorruptPatch)
		}
		add, copyLen, seek := offtin(buf[0:]), offtin(buf[8:]), offtin(buf[16:])
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
		newpos += add + copyLen
		oldpos += add
		// oldpos is within [0, oldLen] here, so neither bound overflows.
		if seek < -oldpos || seek > oldLen-oldpos {
			return fmt.Errorf("control triple %d: seek %d from old byte %d leaves the old file's %d bytes: %w", n, seek, oldpos, oldLen, ErrCorruptPatch)
		}
		oldpos += seek
	}
	// One byte is enough to tell: anything after the last triple the output
	// needs is not a BSDIFF40 control stream (and could be a bomb).
	switch k, err := zr.Read(buf[:1]); {
	case k > 0:
		return fmt.Errorf("control stream: more data after the %d triples that make the output: %w", n, ErrCorruptPatch)
	case err != io.EOF:
		return fmt.Errorf("control stream: after %d triples: %v: %w", n, err, ErrCorruptPatch)
	}
	return nil
}
