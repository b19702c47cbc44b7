package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"peerup/blobstore"
	"peerup/diff"
	"peerup/manifest"
	"peerup/transfer"
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
// applies (manifest.Accept, diff.AcceptDeltas), and lists it last.
func mirrorVersion(ctx context.Context, local *blobstore.Repo, up Source, trust *manifest.Keyring, want manifest.Want, limit int64, res *MirrorResult) error {
	mb, sig, err := up.Manifest(ctx, want.Image, want.Version, limit)
	if err != nil {
		return err
	}
	if _, _, err := manifest.Accept(trust, mb, sig, want); err != nil {
		return err
	}
	m, err := manifest.Parse(mb)
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
	for i := range m.Entries {
		if en := &m.Entries[i]; en.Type == manifest.TypeFile {
			if err := fetch(en.SHA256, en.Size); err != nil {
				return fmt.Errorf("%s: %w", en.Path, err)
			}
		}
	}
	// The delta index and its encodings come along, so that laptops get
	// patches from the school server too. A repo without them is fine.
	draw, dsig, err := up.Deltas(ctx, want.Image, want.Version, blobstore.DeltasLimit(int64(len(mb))))
	switch {
	case errors.Is(err, transfer.ErrNotFound):
		draw = nil
	case err != nil:
		return err
	default:
		x, err := diff.AcceptDeltas(trust, draw, dsig, want.Image, want.Version, mb)
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
	if draw != nil {
		if err := local.AddDeltas(want.Image, want.Version, draw, dsig); err != nil {
			return err
		}
	}
	_, err = local.AddVersion(&m.Header, mb, sig)
	return err
}
