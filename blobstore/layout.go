package blobstore

import (
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/peerup/peerup/manifest"
)

// Layout is where each file of a repo lives (SPEC.md §5), and the one place
// that spells those paths. With Root "" its methods return paths relative
// to the repo, slash-separated, as a server serves them and a client asks
// for them; with a Root, paths on this machine.
type Layout struct{ Root string }

// LayoutOf is the layout of the repo in dir.
func LayoutOf(dir string) Layout { return Layout{Root: dir} }

// The names a repo holds at its top.
const (
	markerName    = "peerup-repo"
	indexName     = "index"
	imagesName    = "images"
	objectsName   = "objects"
	filesName     = "files"
	stagingName   = "staging"
	lockName      = "lock"
	seedLock      = "seed.lock"
	fleetDB       = "fleet.db"
	sigSuffix     = ".sig"
	manifestExt   = ".manifest"
	withdrawnName = "withdrawn"
	rolloutName   = "rollout"
	deltasExt     = ".deltas"
	fromInfix     = "-from-"
	packedExt     = ".zst"
)

// MarkerMagic is what the marker file holds: its presence is what makes a
// folder a repo; an export writes it last.
const MarkerMagic = "peerup-repo 1\n"

func (l Layout) at(rel string) string {
	if l.Root == "" {
		return rel
	}
	return filepath.Join(l.Root, filepath.FromSlash(rel))
}

// Marker is the file that makes a folder a repo.
func (l Layout) Marker() string { return l.at(markerName) }

// Index lists the versions the repo holds; it is the one file that changes.
func (l Layout) Index() string { return l.at(indexName) }

// Lock is the file every writer of the repo holds locked.
func (l Layout) Lock() string { return l.at(lockName) }

// SeedLock is held by the one daemon seeding the repo.
func (l Layout) SeedLock() string { return l.at(seedLock) }

// FleetDB is a seed's table of its laptops' status reports; it is never
// served (Kind does not know it).
func (l Layout) FleetDB() string { return l.at(fleetDB) }

// Images holds one folder per image.
func (l Layout) Images() string { return l.at(imagesName) }

// ImageDir holds an image's manifests and delta indexes.
func (l Layout) ImageDir(image string) string { return l.at(imagesName + "/" + image) }

func versionFile(image string, v uint64, ext string) string {
	return imagesName + "/" + image + "/" + strconv.FormatUint(v, 10) + ext
}

// Manifest is version v of image's manifest.
func (l Layout) Manifest(image string, v uint64) string {
	return l.at(versionFile(image, v, manifestExt))
}

// Signature is the detached signature beside Manifest.
func (l Layout) Signature(image string, v uint64) string {
	return l.at(versionFile(image, v, manifestExt+sigSuffix))
}

// Deltas is a version's signed delta index (SPEC.md §8), beside its
// manifest.
func (l Layout) Deltas(image string, v uint64) string { return l.at(versionFile(image, v, deltasExt)) }

// DeltasSignature is the detached signature beside Deltas.
func (l Layout) DeltasSignature(image string, v uint64) string {
	return l.at(versionFile(image, v, deltasExt+sigSuffix))
}

// ManifestDelta is the zstd-compressed manifest delta (SPEC.md §10) that
// rebuilds version v's manifest from version from's. It is unsigned: the
// rebuilt manifest is checked against Signature(image, v).
func (l Layout) ManifestDelta(image string, v, from uint64) string {
	return l.at(versionFile(image, v, manifestExt+fromInfix+strconv.FormatUint(from, 10)+packedExt))
}

// PackedDeltas is Deltas compressed with zstd, the form a node fetches;
// DeltasSignature covers the uncompressed bytes.
func (l Layout) PackedDeltas(image string, v uint64) string {
	return l.at(versionFile(image, v, deltasExt+packedExt))
}

// Derived are the unsigned files a repo may hold beside version v's
// manifest, each made from signed ones: its packed delta index and its
// manifest deltas. They go with the version.
func (l Layout) Derived(image string, v uint64) ([]string, error) {
	deltas, err := filepath.Glob(l.at(versionFile(image, v, manifestExt+fromInfix+"*"+packedExt)))
	return append(deltas, l.PackedDeltas(image, v)), err
}

// List is an image's signed list of kind k (its withdrawn versions, its
// rollouts); its signature is SignatureOf it. Unlike a version's files it
// changes.
func (l Layout) List(k ListKind, image string) string {
	return l.at(imagesName + "/" + image + "/" + k.String())
}

// SignatureOf is the detached signature beside the signed file p, a path
// this layout returned.
func SignatureOf(p string) string { return p + sigSuffix }

// Objects holds the objects, fanned out by their first two hex digits.
func (l Layout) Objects() string { return l.at(objectsName) }

// Object is where object d lives once committed.
func (l Layout) Object(d Digest) string { return l.at(fanout(objectsName, d)) }

// Files holds the files trees link to (a node's repo only).
func (l Layout) Files() string { return l.at(filesName) }

// File is where file id lives once committed.
func (l Layout) File(id Digest) string { return l.at(fanout(filesName, id)) }

// Staging holds batches being written (a working repo only).
func (l Layout) Staging() string { return l.at(stagingName) }

func fanout(dir string, d Digest) string {
	h := d.String()
	return dir + "/" + h[:2] + "/" + h
}

// Published are the top-level names of what a repo serves, marker first:
// all that an export writes.
func (l Layout) Published() []string {
	return []string{l.Marker(), l.Index(), l.Images(), l.Objects()}
}

// Working are the top-level names only a repo being written holds (a
// publisher's, a mirror's or a laptop's), never an export.
func (l Layout) Working() []string { return []string{l.Lock(), l.Files(), l.Staging()} }

// PathKind is what a repo-relative path names.
type PathKind int

// The kinds of path a repo serves; PathNone is every other path.
const (
	PathNone PathKind = iota
	PathMarker
	PathIndex
	PathObject
	PathSigned  // a manifest, a delta index, or a signature of either
	PathDerived // a manifest delta or a packed delta index
	PathList    // an image's signed list (withdrawn, rollout) or its signature
)

// served matches the only paths a repo serves: anything else, including
// every traversal attempt, is refused before the file system is touched.
var served = regexp.MustCompile(`^(?:(` + markerName + `)|(` + indexName + `)|(` + objectsName + `/[0-9a-f]{2}/[0-9a-f]{64})|(` +
	imagesName + `/[a-z0-9][a-z0-9._-]{0,62}/[1-9][0-9]{0,19}\.(?:manifest|deltas)(?:\.sig)?)|(` +
	imagesName + `/[a-z0-9][a-z0-9._-]{0,62}/[1-9][0-9]{0,19}\.(?:manifest-from-[1-9][0-9]{0,19}|deltas)\.zst)|(` +
	imagesName + `/[a-z0-9][a-z0-9._-]{0,62}/(?:` + withdrawnName + `|` + rolloutName + `)(?:\.sig)?))$`)

// Kind says what the slash-separated, repo-relative path rel names, if it
// is one a repo serves (SPEC.md §5).
func (Layout) Kind(rel string) PathKind {
	m := served.FindStringSubmatch(rel)
	for i := 1; i < len(m); i++ {
		if m[i] != "" {
			return PathKind(i)
		}
	}
	return PathNone
}

// ObjectOf is the object a repo-relative path names, if it names one.
func (l Layout) ObjectOf(rel string) (Digest, bool) {
	if l.Kind(rel) != PathObject {
		return Digest{}, false
	}
	d, err := manifest.ParseDigest(path.Base(rel))
	return d, err == nil
}

// VersionFile says what a file name in an image's folder is: version v's
// manifest or its delta index (ok false for signatures and anything else).
func VersionFile(name string) (v uint64, deltas bool, ok bool) {
	ext := path.Ext(name)
	if ext != manifestExt && ext != deltasExt {
		return 0, false, false
	}
	v, err := strconv.ParseUint(strings.TrimSuffix(name, ext), 10, 64)
	return v, ext == deltasExt, err == nil
}
