package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// MirrorResult says what one mirror pass did.
type MirrorResult struct {
	Versions []IndexVersion // versions added, oldest first
	Objects  int
	Bytes    int64
}

// IndexVersion names a version of an image.
type IndexVersion struct {
	Image   string
	Version uint64
}

// Mirror brings the local repo in step with an upstream static repo (a
// national mirror, a CDN, a caching proxy). It checks every version by the
// rules a laptop applies (manifest.Accept: trusted signature, image and
// version as offered, versions only rising, not expired; diff.AcceptDeltas;
// every object's hash) and lists a version locally
// only once all of it is in place, so a tampered or broken upstream leaves
// the local repo at its last good state.
func Mirror(ctx context.Context, local *blobstore.Repo, up Source, trust *manifest.Keyring, log *slog.Logger) (*MirrorResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	unlock, err := local.Lock()
	if err != nil {
		return nil, fmt.Errorf("mirror: repo %w", err)
	}
	defer unlock()
	upIx, err := up.Index(ctx)
	if err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	ix, err := local.ReadIndex()
	if err != nil {
		return nil, err
	}
	// The school's laptops learn of withdrawals and rollouts from the
	// mirror. The lists come first: a laptop must never find a version
	// listed here without the rollout that holds it back.
	for _, image := range upIx.Images() {
		keepLists(ctx, local, up, image, trust, log)
	}
	res := &MirrorResult{}
	// An expired version is passed over, not fatal: a mirror that was off
	// for longer than the expiry still catches up with the newer ones. It
	// is an error only if nothing newer of its image was mirrored after it.
	expired := map[string]error{}
	for _, e := range upIx.Entries {
		latest, _ := ix.Latest(e.Image)
		if e.Version <= latest.Version {
			continue
		}
		want := manifest.Want{Image: e.Image, Version: e.Version, After: latest.Version, Now: time.Now()}
		err := mirrorVersion(ctx, local, up, trust, want, local.ManifestLimit(e.Image, latest.Version), res)
		if errors.Is(err, manifest.ErrExpired) {
			log.Warn("upstream version has expired; not mirrored", "image", e.Image, "version", e.Version, "err", err)
			expired[e.Image] = fmt.Errorf("mirror %s v%d from %s: %w", e.Image, e.Version, up, err)
			continue
		}
		if err != nil {
			return res, fmt.Errorf("mirror %s v%d from %s: %w", e.Image, e.Version, up, err)
		}
		delete(expired, e.Image)
		res.Versions = append(res.Versions, IndexVersion{e.Image, e.Version})
		log.Info("mirrored", "image", e.Image, "version", e.Version)
		if ix, err = local.ReadIndex(); err != nil {
			return res, err
		}
	}
	var errs []error
	for _, err := range expired {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// mirrorVersion copies one version whole, checked by the rules a laptop
// applies (manifest.Accept, diff.AcceptDeltas), and lists it last: objects
// and encodings (one batch), then the delta index, then the manifest with
// its index entry, so a laptop or seed never sees it without its patches.
func mirrorVersion(ctx context.Context, local *blobstore.Repo, up Source, trust *manifest.Keyring, want manifest.Want, limit int64, res *MirrorResult) error {
	// Received into staging and checked there, as on a laptop: a school
	// server's mirror holds no manifest whole either.
	mf, err := local.Receive(func(w io.Writer) ([]byte, error) { return up.Manifest(ctx, want.Image, want.Version, limit, w) })
	if err != nil {
		return err
	}
	defer mf.Close()
	h, _, err := manifest.Accept(trust, mf.Signed(), want)
	if err != nil {
		return err
	}
	b, err := local.Begin()
	if err != nil {
		return err
	}
	defer b.Suspend()
	fetch := func(d manifest.Digest, size int64) error {
		if b.Has(d) {
			return nil
		}
		if err := up.FetchObject(ctx, b, d, size); err != nil {
			return err
		}
		res.Objects++
		res.Bytes += size
		return nil
	}
	err = eachEntry(mf, func(en *manifest.Entry) error {
		if en.Type != manifest.TypeFile {
			return nil
		}
		if err := fetch(en.SHA256, en.Size); err != nil {
			return fmt.Errorf("%s: %w", en.Path, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The delta index and its encodings come along, so that laptops get
	// patches from the school server too. A repo without them is fine.
	md, err := mf.Digest(ctx)
	if err != nil {
		return err
	}
	dlimit := blobstore.DeltasLimit(mf.Size())
	df, err := local.Receive(func(w io.Writer) ([]byte, error) { return up.Deltas(ctx, want.Image, want.Version, dlimit, w) })
	switch {
	case errors.Is(err, transfer.ErrNotFound):
		df = nil
	case err != nil:
		return err
	default:
		defer df.Close()
		x, err := diff.AcceptDeltas(trust, df.Signed(), want.Image, want.Version, md)
		if err != nil {
			return err
		}
		for _, enc := range x.Encodings {
			if err := fetch(enc.Digest, enc.Size); err != nil {
				return fmt.Errorf("encoding %s: %w", enc.Digest, err)
			}
		}
	}
	if err := b.Commit(); err != nil {
		return err
	}
	// A pass killed before listing this version may have left its delta
	// index, which must not be listed beside a manifest it was not made for.
	if err := local.ClearUnlisted(want.Image, want.Version); err != nil {
		return err
	}
	if df != nil {
		if err := local.AddDeltas(want.Image, want.Version, df); err != nil {
			return err
		}
	}
	e, err := local.StoreVersion(h, mf)
	if err != nil {
		return err
	}
	// The school server's laptops fetch the manifest as a delta from the
	// one they run, and the delta index packed (SPEC.md §10).
	if err := diff.Derive(ctx, local, want.Image, want.Version, 0); err != nil {
		return err
	}
	return local.ListVersion(e)
}
