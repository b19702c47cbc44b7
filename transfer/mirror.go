package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"peerup/blobstore"
	"peerup/diff"
	"peerup/manifest"
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
// national mirror, a CDN, a caching proxy). It checks every version exactly
// as a laptop would — trusted signature, image and version as offered,
// versions only rising, every object's hash — and lists a version locally
// only once all of it is in place, so a tampered or broken upstream leaves
// the local repo at its last good state.
func Mirror(ctx context.Context, local *blobstore.Repo, up *Client, trust *manifest.Keyring, log *slog.Logger) (*MirrorResult, error) {
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
	for _, e := range upIx.Entries {
		if latest, ok := ix.Latest(e.Image); ok && e.Version <= latest.Version {
			continue
		}
		if err := mirrorVersion(ctx, local, up, trust, e, res); err != nil {
			return res, fmt.Errorf("mirror %s v%d from %s: %w", e.Image, e.Version, up, err)
		}
		res.Versions = append(res.Versions, IndexVersion{e.Image, e.Version})
		log.Info("mirrored", "image", e.Image, "version", e.Version)
		if ix, err = local.ReadIndex(); err != nil {
			return res, err
		}
	}
	return res, nil
}

func mirrorVersion(ctx context.Context, local *blobstore.Repo, up *Client, trust *manifest.Keyring, e blobstore.IndexEntry, res *MirrorResult) error {
	mb, sig, err := up.Manifest(ctx, e.Image, e.Version)
	if err != nil {
		return err
	}
	if _, err := trust.Verify(bytes.NewReader(mb), sig); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	m, err := manifest.Parse(mb)
	if err != nil {
		return err
	}
	if m.Image != e.Image || m.Version != e.Version {
		return fmt.Errorf("manifest offered as %s v%d is signed as %s v%d", e.Image, e.Version, m.Image, m.Version)
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
	draw, dsig, err := up.Deltas(ctx, e.Image, e.Version)
	switch {
	case errors.Is(err, ErrNotFound):
		draw = nil
	case err != nil:
		return err
	default:
		if _, err := trust.Verify(bytes.NewReader(draw), dsig); err != nil {
			return fmt.Errorf("delta index: %w", err)
		}
		x, err := diff.ParseDeltaIndex(draw)
		if err != nil {
			return err
		}
		if x.Image != e.Image || x.Version != e.Version || x.Manifest != manifest.Digest(sha256sum(mb)) {
			return fmt.Errorf("delta index does not belong to %s v%d", e.Image, e.Version)
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
		p := filepath.Join(local.Dir(), blobstore.DeltasPath(e.Image, e.Version))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := blobstore.WriteAtomic(p, draw); err != nil {
			return err
		}
		if err := blobstore.WriteAtomic(p+".sig", dsig); err != nil {
			return err
		}
	}
	_, err = local.AddVersion(&m.Header, mb, sig)
	return err
}
