package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

const indexMagic = "peerup-index 1"

// Repo is a store plus signed manifests and an index: a folder of static
// files that any web server can serve (SPEC.md §5).
type Repo struct {
	*Store
	dir string
}

// CheckRepo reports whether dir holds a repo, for the readers and servers
// that must not make one in a folder that is not (an OS tree given as
// --repo, a mistyped path).
func CheckRepo(dir string) error {
	if _, err := os.Stat(LayoutOf(dir).Marker()); err != nil {
		return fmt.Errorf("%s holds no peerup repo (no %s file; peerup publish or mirror makes one)", dir, markerName)
	}
	return nil
}

// OpenRepo opens the repo at dir, creating an empty one if dir is new.
func OpenRepo(dir string) (*Repo, error) {
	if err := fsutil.CheckPrivatePath(dir); err != nil {
		return nil, fmt.Errorf("open repo: %w", err)
	}
	lay := LayoutOf(dir)
	marker := lay.Marker()
	b, err := os.ReadFile(marker)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create repo: %w", err)
		}
		if err := fsutil.WriteAtomic(marker, []byte(MarkerMagic)); err != nil {
			return nil, fmt.Errorf("create repo: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("open repo: %w", err)
	case string(b) != MarkerMagic:
		return nil, fmt.Errorf("open repo %s: %s says %.30q, want %q", dir, markerName, b, MarkerMagic)
	}
	s, err := Open(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(lay.Images(), 0o755); err != nil {
		return nil, fmt.Errorf("open repo: %w", err)
	}
	return &Repo{Store: s, dir: dir}, nil
}

// Dir is the repo's folder.
func (r *Repo) Dir() string { return r.dir }

// Layout places the repo's files.
func (r *Repo) Layout() Layout { return LayoutOf(r.dir) }

// Lock takes the repo's exclusive lock without waiting; release it with the
// returned function. Every writer holds it.
func (r *Repo) Lock() (func(), error) {
	return fsutil.LockFile(r.Layout().Lock())
}

// IndexEntry is one published version.
type IndexEntry struct {
	Image    string
	Version  uint64
	Manifest Digest // SHA-256 of the manifest file
}

// Index lists the versions a repo holds. It is a hint for choosing what to
// fetch; only the signed manifests are trusted.
type Index struct {
	Entries []IndexEntry // sorted by image, then version
	size    int64        // bytes it was parsed from
}

// Size is the length of the file the index was parsed from (0 for one
// built in memory): what fetching it cost.
func (ix *Index) Size() int64 { return ix.size }

// Latest returns the newest version of image.
func (ix *Index) Latest(image string) (IndexEntry, bool) {
	return ix.LatestExcept(image, func(uint64) bool { return false })
}

// LatestExcept returns the newest entry for image whose version skip does
// not refuse.
func (ix *Index) LatestExcept(image string, skip func(uint64) bool) (IndexEntry, bool) {
	var best IndexEntry
	ok := false
	for _, e := range ix.Entries {
		if e.Image == image && !skip(e.Version) && (!ok || e.Version > best.Version) {
			best, ok = e, true
		}
	}
	return best, ok
}

// Find returns the entry for image at version v.
func (ix *Index) Find(image string, v uint64) (IndexEntry, bool) {
	for _, e := range ix.Entries {
		if e.Image == image && e.Version == v {
			return e, true
		}
	}
	return IndexEntry{}, false
}

// Images lists the image ids in the index.
func (ix *Index) Images() []string {
	var out []string
	for _, e := range ix.Entries {
		if len(out) == 0 || out[len(out)-1] != e.Image {
			out = append(out, e.Image)
		}
	}
	return out
}

// Set adds or replaces an entry, keeping the order.
func (ix *Index) Set(e IndexEntry) {
	for i := range ix.Entries {
		if ix.Entries[i].Image == e.Image && ix.Entries[i].Version == e.Version {
			ix.Entries[i] = e
			return
		}
	}
	ix.Entries = append(ix.Entries, e)
	sort.Slice(ix.Entries, func(i, j int) bool {
		a, b := ix.Entries[i], ix.Entries[j]
		if a.Image != b.Image {
			return a.Image < b.Image
		}
		return a.Version < b.Version
	})
}

// Remove drops image at version v.
func (ix *Index) Remove(image string, v uint64) {
	out := ix.Entries[:0]
	for _, e := range ix.Entries {
		if e.Image != image || e.Version != v {
			out = append(out, e)
		}
	}
	ix.Entries = out
}

// Marshal encodes the index.
func (ix *Index) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(indexMagic + "\n")
	for _, e := range ix.Entries {
		fmt.Fprintf(&b, "%s %d %s\n", e.Image, e.Version, e.Manifest)
	}
	return b.Bytes()
}

// ErrIndex is wrapped by every error about a malformed index.
var ErrIndex = errors.New("malformed repo index")

// ParseIndex reads an index strictly.
func ParseIndex(b []byte) (*Index, error) {
	if len(b) > MaxIndex {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrIndex, MaxIndex)
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return nil, fmt.Errorf("%w: empty or truncated (no final newline)", ErrIndex)
	}
	lines := strings.Split(string(b[:len(b)-1]), "\n")
	if lines[0] != indexMagic {
		return nil, fmt.Errorf("%w: first line is not %q", ErrIndex, indexMagic)
	}
	ix := &Index{size: int64(len(b))}
	for n, text := range lines[1:] {
		line := n + 2
		f := strings.Split(text, " ")
		if len(f) != 3 {
			return nil, fmt.Errorf("%w: line %d: want IMAGE VERSION SHA256", ErrIndex, line)
		}
		if err := manifest.ValidImage(f[0]); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrIndex, line, err)
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil || v == 0 || strconv.FormatUint(v, 10) != f[1] {
			return nil, fmt.Errorf("%w: line %d: bad version %q", ErrIndex, line, f[1])
		}
		d, err := manifest.ParseDigest(f[2])
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrIndex, line, err)
		}
		e := IndexEntry{Image: f[0], Version: v, Manifest: d}
		if n := len(ix.Entries); n > 0 {
			p := ix.Entries[n-1]
			if p.Image > e.Image || p.Image == e.Image && p.Version >= e.Version {
				return nil, fmt.Errorf("%w: line %d: not sorted", ErrIndex, line)
			}
		}
		ix.Entries = append(ix.Entries, e)
	}
	return ix, nil
}

// ReadIndex reads the repo's index; a repo with nothing published has an
// empty one.
func (r *Repo) ReadIndex() (*Index, error) {
	b, err := os.ReadFile(r.Layout().Index())
	if errors.Is(err, fs.ErrNotExist) {
		return &Index{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	return ParseIndex(b)
}

// WriteIndex replaces the index atomically and durably.
func (r *Repo) WriteIndex(ix *Index) error {
	if err := fsutil.WriteAtomic(r.Layout().Index(), ix.Marshal()); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	return nil
}

// AddVersion stores a verified manifest, received into staging (Receive),
// by renaming it into place beside its signature, and lists it in the
// index. The caller must have committed every object the manifest names,
// and the delta index and encodings it means to serve (AddDeltas), so that
// a peer who reads the index finds everything in place. m is spent: close
// it, but read it no more.
func (r *Repo) AddVersion(h *manifest.Header, m *SignedFile) (IndexEntry, error) {
	e, err := r.storeManifest(h, m)
	if err != nil {
		return e, err
	}
	return e, r.list(e)
}

// StoreVersion is AddVersion without the listing: the manifest is in place
// for files to be derived from it (a mirror's manifest deltas), and
// ListVersion makes the version visible after.
func (r *Repo) StoreVersion(h *manifest.Header, m *SignedFile) (IndexEntry, error) {
	return r.storeManifest(h, m)
}

// ListVersion lists a version StoreVersion stored.
func (r *Repo) ListVersion(e IndexEntry) error { return r.list(e) }

// storeManifest renames a received manifest into place beside its
// signature without listing it: a version whose manifest is stored but not
// listed is not there for any reader (SPEC.md §5).
func (r *Repo) storeManifest(h *manifest.Header, m *SignedFile) (IndexEntry, error) {
	e := IndexEntry{Image: h.Image, Version: h.Version}
	var err error
	if e.Manifest, err = m.Digest(context.Background()); err != nil {
		return e, fmt.Errorf("add version: %w", err)
	}
	if err := m.commit(r.Layout().Manifest(h.Image, h.Version)); err != nil {
		return e, fmt.Errorf("add version: %w", err)
	}
	return e, nil
}

// list names a version in the index: the commit point of every way a
// version arrives (publish, mirror, pull). Everything the version needs is
// durable by then (a batch's syncfs, a signed file's fsync), so the index's
// atomic replacement is the one switch.
func (r *Repo) list(e IndexEntry) error {
	ix, err := r.ReadIndex()
	if err != nil {
		return err
	}
	ix.Set(e)
	return r.WriteIndex(ix)
}

// ClearUnlisted removes what an interrupted publish or mirror left of a
// version it never listed (manifest, delta index and their signatures), so
// that a stale delta index cannot be listed beside a new manifest. A listed
// version is left alone. Only the holder of the repo's lock may call it.
func (r *Repo) ClearUnlisted(image string, v uint64) error {
	ix, err := r.ReadIndex()
	if err != nil {
		return err
	}
	if _, listed := ix.Find(image, v); listed {
		return nil
	}
	if err := r.removeVersionFiles(image, v); err != nil {
		return fmt.Errorf("clear unlisted %s v%d: %w", image, v, err)
	}
	return nil
}

// removeVersionFiles removes every file of version v: manifest, delta
// index, their signatures and what was derived from them.
func (r *Repo) removeVersionFiles(image string, v uint64) error {
	lay := r.Layout()
	derived, err := lay.Derived(image, v)
	if err != nil {
		return err
	}
	// The manifest goes last: until then the version's files are found by it.
	for _, p := range append(derived, lay.Deltas(image, v), lay.DeltasSignature(image, v), lay.Signature(image, v), lay.Manifest(image, v)) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// AddDerived durably stores data as a version's unsigned derived file at
// p, a path of Layout().ManifestDelta or PackedDeltas: written under a
// temporary name, fsynced and renamed. A reader checks what it rebuilds
// from it against a signature, so it needs no signature of its own.
func (r *Repo) AddDerived(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("add %s: %w", filepath.Base(p), err)
	}
	if err := fsutil.WriteAtomic(p, data); err != nil {
		return fmt.Errorf("add %s: %w", filepath.Base(p), err)
	}
	return nil
}

// AddDeltas stores a version's signed delta index, received into staging,
// beside its manifest. The caller has verified it (diff.AcceptDeltas) and
// committed the encodings it means to serve; the image's folder is made if
// this is its first file. d is spent, as for AddVersion.
func (r *Repo) AddDeltas(image string, v uint64, d *SignedFile) error {
	if err := d.commit(r.Layout().Deltas(image, v)); err != nil {
		return fmt.Errorf("add delta index: %w", err)
	}
	return nil
}

// OpenVersion opens the stored manifest of a version, with its signature,
// to stream it; close it when done.
func (r *Repo) OpenVersion(image string, v uint64) (*SignedFile, error) {
	sf, err := openSigned(r.Layout().Manifest(image, v))
	if err != nil {
		return nil, fmt.Errorf("open manifest %s v%d: %w", image, v, err)
	}
	return sf, nil
}

// OpenDeltas opens the stored delta index of a version, with its
// signature; an error wrapping fs.ErrNotExist means the version has none.
func (r *Repo) OpenDeltas(image string, v uint64) (*SignedFile, error) {
	sf, err := openSigned(r.Layout().Deltas(image, v))
	if err != nil {
		return nil, fmt.Errorf("open delta index %s v%d: %w", image, v, err)
	}
	return sf, nil
}

// RemoveVersion unlists a version and deletes its manifest (gc).
func (r *Repo) RemoveVersion(image string, v uint64) error {
	ix, err := r.ReadIndex()
	if err != nil {
		return err
	}
	ix.Remove(image, v)
	if err := r.WriteIndex(ix); err != nil {
		return err
	}
	return r.removeVersionFiles(image, v)
}
