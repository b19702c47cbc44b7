package diff

import (
	"context"

	"peerup/blobstore"
)

// PublishOptions are blobstore.PublishOptions and, optionally, the
// encodings to make of the new version.
type PublishOptions struct {
	blobstore.PublishOptions
	// Deltas, if not nil, has Generate make the new version's encodings
	// against the earlier ones (Signer defaults to the version's); nil
	// makes none.
	Deltas *GenerateOptions
	// Published, if set, is called once the version is listed and before
	// its encodings are made, which can take minutes: a publisher can say
	// so at once.
	Published func(*blobstore.Published)
}

// PublishResult is what Publish did: the version, and its encodings if it
// made any.
type PublishResult struct {
	*blobstore.Published
	Deltas *GenerateResult // nil if none were made
}

// Publish publishes the tree at dir as a new version of repo, then makes
// its encodings: `peerup publish`. Here rather than in blobstore because
// blobstore cannot import diff. If making the encodings fails, the version
// is published all the same (laptops fetch it whole), and the result says
// so beside the error.
func Publish(ctx context.Context, repo *blobstore.Repo, dir string, o PublishOptions) (*PublishResult, error) {
	pub, err := repo.Publish(ctx, dir, o.PublishOptions)
	if err != nil {
		return nil, err
	}
	res := &PublishResult{Published: pub}
	if o.Published != nil {
		o.Published(pub)
	}
	h := pub.Header
	if o.Deltas == nil || h.Version == 1 {
		return res, nil // no earlier version to encode against
	}
	g := *o.Deltas
	if g.Signer == nil {
		g.Signer = o.Signer
	}
	if res.Deltas, err = Generate(ctx, repo, h.Image, h.Version, g); err != nil {
		return res, err
	}
	return res, nil
}
