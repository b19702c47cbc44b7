package blobstore

import (
	"os"

	"github.com/peerup/peerup/manifest"
)

// Caps on the repo files a node holds in memory whole: the index, a
// manifest and a delta index (SPEC.md §5 "Client limits"; a detached
// signature's is manifest.MaxSignature). Every reader of a repo, over HTTP
// or from a stick, applies these, counted in bytes as they arrive, before
// anything is parsed or decompressed.
const (
	// MaxIndex: an index line is about 90 bytes, so 256 KiB lists about
	// 2,900 versions, eight years of daily releases of one image.
	MaxIndex = 256 << 10
	// DefaultManifestLimit is for a node with no image yet (a first
	// install): a full desktop OS of 300k paths has a manifest of about
	// 45 MiB. It is held once, before any tree exists to size it by.
	DefaultManifestLimit = 64 << 20
	// manifestFloor is added to the running image's size, so a small
	// image may still grow by a whole application suite.
	manifestFloor = 4 << 20
)

// ManifestLimit is the largest manifest a node accepts for the next version
// of an image whose running manifest has current bytes (0: no image yet,
// DefaultManifestLimit). A new version may grow, so the cap is twice the
// running one plus 4 MiB: a laptop then never holds a hostile endless
// manifest much larger than the honest one it already runs.
func ManifestLimit(current int64) int64 {
	if current <= 0 {
		return DefaultManifestLimit
	}
	return min(2*current+manifestFloor, manifest.MaxSize)
}

// DeltasLimit is the largest delta index a node accepts beside a verified
// manifest of manifestSize bytes. An index line (about 215 bytes) names one
// encoding of a changed file, and a file's manifest line is about 150
// bytes; publish --delta-depth 3 writes at most a few per changed file, and
// updates change a fraction of the files, so four times the signed manifest
// plus 4 MiB is generous. The manifest is signed, so a peer cannot raise
// this cap without the fleet key.
func DeltasLimit(manifestSize int64) int64 {
	return min(4*manifestSize+manifestFloor, manifest.MaxSize)
}

// ManifestLimit is the package's ManifestLimit sized by the manifest of image's version
// v in this repo: the version a node runs, or a mirror's newest (v 0, or
// a manifest not held: DefaultManifestLimit).
func (r *Repo) ManifestLimit(image string, v uint64) int64 {
	if v == 0 {
		return ManifestLimit(0)
	}
	fi, err := os.Stat(r.Layout().Manifest(image, v))
	if err != nil {
		return ManifestLimit(0)
	}
	return ManifestLimit(fi.Size())
}
