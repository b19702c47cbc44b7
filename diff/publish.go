package diff

import (
	"context"
	"fmt"

	"github.com/peerup/peerup/blobstore"
)

// PublishOptions are blobstore.PublishOptions and, optionally, the
// encodings to make of the new version.
type PublishOptions struct {
	blobstore.PublishOptions
	// Deltas, if not nil, has Generate make the new version's encodings
	// against the earlier ones (Signer defaults to the version's); nil
	// makes none.
	Deltas *GenerateOptions
	// Stored, if set, is called once the version's objects and manifest
	// are stored and before its encodings are made, which can take
	// minutes: a publisher can say so at once. The version is not listed
	// yet.
	Stored func(*blobstore.Published)
}

// PublishResult is what Publish did: the version, and its encodings if it
// made any.
type PublishResult struct {
	*blobstore.Published
	Deltas *GenerateResult // nil if none were made
}

// Publish publishes the tree at dir as a new version of repo with its
// encodings: `peerup publish`. Here rather than in blobstore because
// blobstore cannot import diff. The version is listed last, once its
// delta index and encodings are in place, so that no laptop or seed sees
// it before it can be fetched as patches (SPEC.md §5). If making the
// encodings fails, nothing is listed and the version's files are removed.
func Publish(ctx context.Context, repo *blobstore.Repo, dir string, o PublishOptions) (*PublishResult, error) {
	p, err := repo.Stage(ctx, dir, o.PublishOptions)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	res := &PublishResult{Published: p.Published}
	if o.Stored != nil {
		o.Stored(p.Published)
	}
	h := p.Header
	// Version 1 has nothing earlier to be encoded against.
	if o.Deltas != nil && h.Version > 1 {
		g := *o.Deltas
		if g.Signer == nil {
			g.Signer = o.Signer
		}
		if res.Deltas, err = Generate(ctx, repo, h.Image, h.Version, g); err != nil {
			return nil, fmt.Errorf("publish %s v%d (not listed): %w", h.Image, h.Version, err)
		}
	} else if h.Version > 1 {
		if err := Derive(ctx, repo, h.Image, h.Version, 0); err != nil {
			return nil, fmt.Errorf("publish %s v%d (not listed): %w", h.Image, h.Version, err)
		}
	}
	if err := p.List(); err != nil {
		return nil, err
	}
	return res, nil
}
