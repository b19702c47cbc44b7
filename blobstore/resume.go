package blobstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ResumeMin is the size from which an interrupted download is kept to be
// resumed; below it, starting over costs less than the bookkeeping.
const ResumeMin = 1 << 20

// Opener returns the object's bytes from offset on. A source that cannot
// start there returns the whole object and start 0.
type Opener func(ctx context.Context, offset int64) (body io.ReadCloser, start int64, err error)

// counted is open with every byte read from its bodies told to received.
func counted(open Opener, received func(n int64)) Opener {
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		body, start, err := open(ctx, offset)
		if err != nil {
			return nil, 0, err
		}
		return countingBody{body, received}, start, nil
	}
}

type countingBody struct {
	io.ReadCloser
	received func(n int64)
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.received(int64(n))
	}
	return n, err
}

func (b *Batch) partPath(d Digest) string { return filepath.Join(b.dir, "p-"+d.String()) }

// PutFrom is Put for a source that can resume: bytes already received for
// d by an interrupted attempt (this batch's, or one Salvage adopted) are kept
// and only the rest is asked for. Every byte is still hashed: the prefix is
// read back from disk, so the check covers the whole object, and a prefix
// that turns out wrong is thrown away with the error.
func (b *Batch) PutFrom(ctx context.Context, want Digest, size int64, open Opener) error {
	if b.Has(want) {
		return nil
	}
	if b.Received != nil {
		open = counted(open, b.Received)
	}
	if size < ResumeMin {
		body, _, err := open(ctx, 0)
		if err != nil {
			return err
		}
		defer body.Close()
		return b.Put(ctx, want, size, body)
	}
	part := b.partPath(want)
	resumed, err := b.resume(ctx, want, size, part, open)
	if err != nil && resumed && errors.Is(err, ErrMismatch) {
		// The kept prefix may have come from another peer, one that sent
		// garbage and hung up: this source is not proven at fault until it
		// fails for bytes that are all its own. Start over from it once.
		os.Remove(part)
		_, err = b.resume(ctx, want, size, part, open)
	}
	if err != nil {
		return err
	}
	return b.adopt(part, want)
}

// resume is one attempt of PutFrom: it appends to the partial download at
// part what open sends and checks the whole. It reports whether the
// attempt built on bytes an earlier attempt kept.
func (b *Batch) resume(ctx context.Context, want Digest, size int64, part string, open Opener) (resumed bool, err error) {
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("object %s: %w", want, err)
	}
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil || have > size {
		f.Close()
		os.Remove(part)
		return false, fmt.Errorf("object %s: bad partial download", want)
	}
	body, start, err := open(ctx, have)
	if err != nil {
		f.Close()
		return false, err
	}
	defer body.Close()
	if start != have {
		// The source starts elsewhere (no Range support): start over.
		if err := f.Truncate(0); err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err != nil {
			f.Close()
			return false, err
		}
		have = 0
	}
	buf := copyBufs.Get().(*[]byte)
	_, cerr := io.CopyBuffer(f, io.LimitReader(ctxReader{ctx, body}, size-have+1), *buf)
	copyBufs.Put(buf)
	if err := f.Close(); cerr == nil {
		cerr = err
	}
	if cerr != nil {
		// Keep what arrived for the next attempt.
		return have > 0, fmt.Errorf("object %s: %w", want, cerr)
	}
	got, n, err := hashFile(ctx, part)
	if err != nil {
		return have > 0, err
	}
	if err := verify(want, size, got, n); err != nil {
		if !errors.Is(err, ErrTooShort) {
			os.Remove(part) // still short means the source hung up: keep it
		}
		return have > 0, err
	}
	return have > 0, nil
}

func hashFile(ctx context.Context, path string) (Digest, int64, error) {
	var d Digest
	f, err := os.Open(path)
	if err != nil {
		return d, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, ctxReader{ctx, f})
	if err != nil {
		return d, n, err
	}
	h.Sum(d[:0])
	return d, n, nil
}

// salvageParts moves the partial downloads of an interrupted batch into b.
func (b *Batch) salvageParts(old string) {
	ents, _ := os.ReadDir(old)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "p-") {
			dst := filepath.Join(b.dir, e.Name())
			if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
				os.Rename(filepath.Join(old, e.Name()), dst)
			}
		}
	}
}
