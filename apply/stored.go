package apply

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
)

// eachEntry streams the entries of a stored manifest to f, holding one at
// a time: a node reads its manifests many times (gc, verify, /etc merge)
// and never whole.
func eachEntry(mf *blobstore.SignedFile, f func(e *manifest.Entry) error) error {
	r, err := manifest.NewReader(mf.Reader())
	if err != nil {
		return err
	}
	for {
		e, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := f(e); err != nil {
			return err
		}
	}
}

// eachVersionEntry opens version v's stored manifest and streams its
// entries to f.
func eachVersionEntry(repo *blobstore.Repo, image string, v uint64, f func(e *manifest.Entry) error) error {
	mf, err := repo.OpenVersion(image, v)
	if err != nil {
		return err
	}
	defer mf.Close()
	if err := eachEntry(mf, f); err != nil {
		return fmt.Errorf("manifest %s v%d: %w", image, v, err)
	}
	return nil
}

// storedHeader reads the header of version v's stored manifest.
func storedHeader(repo *blobstore.Repo, image string, v uint64) (manifest.Header, error) {
	mf, err := repo.OpenVersion(image, v)
	if err != nil {
		return manifest.Header{}, err
	}
	defer mf.Close()
	r, err := manifest.NewReader(mf.Reader())
	if err != nil {
		return manifest.Header{}, fmt.Errorf("manifest %s v%d: %w", image, v, err)
	}
	return r.Header(), nil
}

// eachStoredEncoding streams the encodings of version v's stored delta
// index to f; a version without one has none. It reports whether the
// index parsed, for callers that skip a bad one.
func eachStoredEncoding(repo *blobstore.Repo, image string, v uint64, f func(e *diff.Encoding)) (bool, error) {
	df, err := repo.OpenDeltas(image, v)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer df.Close()
	_, err = diff.ScanDeltaIndex(df.Reader(), func(e *diff.Encoding) error {
		f(e)
		return nil
	})
	return err == nil, nil
}
