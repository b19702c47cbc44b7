package apply

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// receiveManifest fetches version v's manifest into staging: rebuilt from
// the running version's with a manifest delta where the source has one
// (SPEC.md §10 "Metadata on the wire"), whole otherwise. It adds what it
// received to res.MetadataBytes and notes the delta's base in
// res.ManifestFrom. The caller verifies the result as for a whole one.
func (s *Sysroot) receiveManifest(ctx context.Context, src Source, image string, v, current uint64, res *PullResult) (*blobstore.SignedFile, error) {
	// The running image sizes what the next may be: a laptop holds no
	// endless manifest much larger than the one it runs.
	limit := s.repo.ManifestLimit(image, current)
	if current != 0 {
		mf, n, err := s.rebuildManifest(ctx, src, image, v, current, limit)
		res.MetadataBytes += n
		if err == nil {
			res.ManifestFrom = current
			return mf, nil
		}
		if !errors.Is(err, transfer.ErrNotFound) {
			return nil, fmt.Errorf("manifest delta from v%d: %w", current, err)
		}
	}
	// The manifest goes to a file in staging as it arrives, and is verified
	// and parsed from there: it is never whole in memory.
	mf, err := s.repo.Receive(func(w io.Writer) ([]byte, error) { return src.Manifest(ctx, image, v, limit, w) })
	if err != nil {
		return nil, err
	}
	res.MetadataBytes += mf.Size() + int64(len(mf.Signed().Sig))
	return mf, nil
}

// rebuildManifest streams the source's manifest delta from version from
// through the decoder, over the stored manifest of from, into staging. It
// returns the bytes it received; an error wrapping transfer.ErrNotFound if
// the node or the source lacks what a delta needs.
func (s *Sysroot) rebuildManifest(ctx context.Context, src Source, image string, v, from uint64, limit int64) (*blobstore.SignedFile, int64, error) {
	base, err := s.repo.OpenVersion(image, from)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", transfer.ErrNotFound, err)
	}
	defer base.Close()
	return s.receivePacked(
		func(w io.Writer) ([]byte, error) { return src.ManifestDelta(ctx, image, v, from, limit, w) },
		func(packed io.Reader, w io.Writer) error {
			return s.dec.RebuildManifest(ctx, base.Reader(), packed, w, limit)
		})
}

// receivePacked receives into staging what decode makes of the bytes fetch
// streams, returning how many bytes fetch received with the signature. A
// fetch's own error comes first (it says more, and may be a 404), unless
// it failed because decode had given up.
func (s *Sysroot) receivePacked(fetch func(w io.Writer) ([]byte, error), decode func(packed io.Reader, w io.Writer) error) (*blobstore.SignedFile, int64, error) {
	var got counter
	sf, err := s.repo.Receive(func(w io.Writer) ([]byte, error) {
		pr, pw := io.Pipe()
		type fetched struct {
			sig []byte
			err error
		}
		done := make(chan fetched, 1)
		go func() {
			sig, err := fetch(io.MultiWriter(pw, &got))
			pw.CloseWithError(err)
			done <- fetched{sig, err}
		}()
		err := decode(pr, w)
		pr.CloseWithError(errStoppedReading)
		f := <-done
		if f.err != nil && !errors.Is(f.err, errStoppedReading) {
			return nil, f.err
		}
		got.n += int64(len(f.sig))
		return f.sig, err
	})
	return sf, got.n, err
}

// deltaIndex fetches the version's delta index into staging, packed where
// the source has it so, and verifies it there, bound to the verified
// manifest mf. A source with none is fine (whole objects only); one whose
// index fails the checks is not. What it received is added to
// res.MetadataBytes.
func (s *Sysroot) deltaIndex(ctx context.Context, src Source, image string, v uint64, mf *blobstore.SignedFile, trust *manifest.Keyring, res *PullResult) (*signedDeltas, error) {
	limit := blobstore.DeltasLimit(mf.Size())
	// The packed form is no larger than the cap on the unpacked one.
	df, n, err := s.receivePacked(
		func(w io.Writer) ([]byte, error) { return src.PackedDeltas(ctx, image, v, limit, w) },
		func(packed io.Reader, w io.Writer) error { return s.dec.Unpack(ctx, packed, w, limit) })
	if errors.Is(err, transfer.ErrNotFound) {
		n = 0
		df, err = s.repo.Receive(func(w io.Writer) ([]byte, error) { return src.Deltas(ctx, image, v, limit, w) })
		if err == nil {
			n = df.Size() + int64(len(df.Signed().Sig))
		}
	}
	res.MetadataBytes += n
	if errors.Is(err, transfer.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("delta index: %w", err)
	}
	md, err := mf.Digest(ctx)
	if err != nil {
		df.Close()
		return nil, err
	}
	idx, err := diff.AcceptDeltas(trust, df.Signed(), image, v, md)
	if err != nil {
		df.Close()
		return nil, err
	}
	return &signedDeltas{idx: idx, file: df}, nil
}

// errStoppedReading is what a fetch into receivePacked gets once the
// decoder has given up on what it sent.
var errStoppedReading = errors.New("the decoder stopped reading")

// counter counts the bytes written through it.
type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
