package apply

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// builder creates a tree entry by entry, in manifest order. A directory's
// own mode, owner and mtime are set when the walk leaves it, so that a
// read-only directory can still be filled and its mtime is not disturbed by
// its children.
//
// The tree is built while the objects are still being fetched: a file
// whose object is among those the pull fetches (later) is set aside, and
// so is finishing every directory above it, until complete runs once the
// objects are all there.
type builder struct {
	root     string
	store    *blobstore.Store
	batch    *blobstore.Batch
	open     []*manifest.Entry // directories being filled, outermost first
	waitDir  []bool            // per open directory: a file below it is set aside
	uid, gid uint32            // who we are: new entries already have this owner
	local    string            // SYSROOT/local: the node's own versions of image files
	policy   EntryPolicy
	later    map[manifest.Digest]bool  // objects still being fetched
	files    []*manifest.Entry         // set aside, in manifest order; nil once linked
	waiting  map[manifest.Digest][]int // the files set aside for each object
	dirs     []*manifest.Entry         // left unfinished, innermost first
}

func (b *builder) path(rel string) string {
	if rel == "." {
		return b.root
	}
	return filepath.Join(b.root, filepath.FromSlash(rel))
}

func (b *builder) closeDirsUntil(parent string) error {
	for len(b.open) > 0 {
		top := b.open[len(b.open)-1]
		if top.Path == parent {
			return nil
		}
		if b.waitDir[len(b.open)-1] {
			b.dirs = append(b.dirs, top)
		} else if err := b.finishDir(top); err != nil {
			return err
		}
		b.open = b.open[:len(b.open)-1]
		b.waitDir = b.waitDir[:len(b.open)]
	}
	return nil
}

func (b *builder) finishDir(e *manifest.Entry) error {
	if err := b.setMeta(b.path(e.Path), e); err != nil {
		return fmt.Errorf("build %s: %w", e.Path, err)
	}
	return b.check(e)
}

// check refuses an entry that did not come out as the signed manifest says
// (an owner chown ignored, a device number the kernel changed, an xattr
// the filesystem dropped): a node never switches to a tree that differs
// from what was signed. The node's own /etc entries are checked as its
// own.
func (b *builder) check(e *manifest.Entry) error {
	return b.checkAt(b.path(e.Path), e)
}

// checkAt is check for the entry e made at p.
func (b *builder) checkAt(p string, e *manifest.Entry) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fmt.Errorf("build %s: %w", e.Path, err)
	}
	if _, ok := override(b.local, e); ok {
		own := *e // the node's own bytes: its size, the image's metadata
		own.Size = st.Size
		e = &own
	}
	if d := checkMeta(p, e, &st); d != "" {
		return fmt.Errorf("build %s: %w: it came out %s", short(e.Path), ErrBuiltDiffers, d)
	}
	return nil
}

// short keeps a path in an error message to a line.
func short(p string) string {
	if len(p) <= 120 {
		return p
	}
	return p[:60] + "…" + p[len(p)-59:]
}

// setMeta gives a fresh entry its metadata; it already belongs to us, so
// the chown is skipped when the entry is ours (no directory in a tree being
// built is setgid yet).
func (b *builder) setMeta(p string, e *manifest.Entry) error {
	return blobstore.SetMetaOwned(p, blobstore.MetaOf(e), int(b.uid), int(b.gid))
}

// add builds entry e: the image's when from is "", else the node's own,
// copied from the path from (SPEC.md §7 step 5).
func (b *builder) add(e *manifest.Entry, from string) error {
	// The manifest reader has checked all of this already; the builder
	// checks again, so that no reader bug or future caller can make it
	// write outside the tree: the path must be clean and relative, and its
	// parent a directory this builder made (never a symlink to /etc).
	if err := manifest.CheckPath(e.Path); err != nil {
		return fmt.Errorf("build %q: %w: %w", e.Path, ErrUnsafePath, err)
	}
	if from == "" {
		// The policy screens what images bring; the node's own entries are
		// already on it.
		if err := b.policy.check(e); err != nil {
			return err
		}
	}
	if e.Path == "." {
		if len(b.open) > 0 || e.Type != manifest.TypeDir {
			return fmt.Errorf("build %q: %w: the root must come first, as a directory", e.Path, ErrUnsafePath)
		}
	} else {
		parent := manifest.Parent(e.Path)
		if err := b.closeDirsUntil(parent); err != nil {
			return err
		}
		if len(b.open) == 0 || b.open[len(b.open)-1].Path != parent {
			return fmt.Errorf("build %q: %w: parent %q is not a directory built before it", e.Path, ErrUnsafePath, parent)
		}
	}
	p := b.path(e.Path)
	var err error
	switch {
	case e.Type == manifest.TypeDir:
		if e.Path != "." {
			err = os.Mkdir(p, 0o700)
		}
		if err == nil {
			b.open = append(b.open, e)
			b.waitDir = append(b.waitDir, false)
		}
	case e.Type == manifest.TypeFile && from == "" && b.later[e.SHA256]:
		if b.waiting == nil {
			b.waiting = map[manifest.Digest][]int{}
		}
		b.waiting[e.SHA256] = append(b.waiting[e.SHA256], len(b.files))
		b.files = append(b.files, e)
		for i := range b.waitDir {
			b.waitDir[i] = true
		}
		return nil
	default:
		err = b.create(p, e, from)
	}
	if err != nil {
		return fmt.Errorf("build %s (%s): %w", short(e.Path), e.Type, shortErr(err))
	}
	if e.Type == manifest.TypeDir {
		return nil // checked once finished
	}
	return b.check(e)
}

// create makes the entry e, anything but a directory, at p: the node's own
// file copied from from if that is set, else the image's. A build makes
// each entry at its place in the tree; a repair makes one beside the tree
// and renames it into place.
func (b *builder) create(p string, e *manifest.Entry, from string) error {
	switch e.Type {
	case manifest.TypeFile:
		if from != "" {
			return copyFile(from, p, e)
		}
		return b.linkFile(p, e)
	case manifest.TypeSymlink:
		err := os.Symlink(e.Target, p)
		if err == nil && (e.UID != b.uid || e.GID != b.gid) {
			err = os.Lchown(p, int(e.UID), int(e.GID))
		}
		if err == nil {
			err = blobstore.FixMtime(p)
		}
		return err
	case manifest.TypeFifo, manifest.TypeChar, manifest.TypeBlock:
		mode := uint32(unix.S_IFIFO)
		if e.Type == manifest.TypeChar {
			mode = unix.S_IFCHR
		} else if e.Type == manifest.TypeBlock {
			mode = unix.S_IFBLK
		}
		err := unix.Mknod(p, mode|0o600, int(unix.Mkdev(e.Major, e.Minor)))
		if err == nil {
			err = b.setMeta(p, e)
		}
		return err
	}
	return fmt.Errorf("unknown type %v", e.Type)
}

// shortErr drops the path a *fs.PathError repeats: for a 4 KB path the
// message would be 8 KB.
func shortErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}

// linkFile hard-links the store's inode for the entry into the tree, or
// copies it where the filesystem refuses a link: across filesystems (EXDEV),
// at the link-count limit (EMLINK), or where protected_hardlinks says no
// (EPERM).
func (b *builder) linkFile(p string, e *manifest.Entry) error {
	if lp, ok := override(b.local, e); ok {
		// The node's own version of this file (a hostname, a Wi-Fi
		// setting) replaces the image's, in every tree built here.
		return copyFile(lp, p, e)
	}
	meta := blobstore.MetaOf(e)
	if !linksStore(e) {
		// The running system writes to its /etc, and local users to a file
		// others may write: a link would let them write into the store's
		// object, the trees sharing it and what the node serves its
		// neighbours.
		src, err := b.batch.ObjectPath(e.SHA256)
		if err != nil {
			return err
		}
		return copyFile(src, p, e)
	}
	// Most files of a new version are already in the store: link first,
	// and look further only if that fails (or a repair replaces it).
	id := blobstore.FileID(e.SHA256, meta)
	if !b.batch.Replaces(e.SHA256, id) && os.Link(b.store.FilePath(id), p) == nil {
		return nil
	}
	src, err := b.batch.LinkFile(e.SHA256, meta)
	if err != nil {
		return err
	}
	err = os.Link(src, p)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EMLINK) && !errors.Is(err, unix.EPERM) {
		return err
	}
	return copyFile(src, p, e)
}

// linksStore reports whether a tree's file e shares its inode with the
// store (linkFile), rather than holding a copy of its own.
func linksStore(e *manifest.Entry) bool {
	return !isEtc(e.Path) && blobstore.MetaOf(e).Shareable()
}

func copyFile(src, dst string, e *manifest.Entry) error {
	return blobstore.CopyWithMeta(src, dst, blobstore.MetaOf(e))
}

// finish ends the walk: every directory is closed, or left for complete.
func (b *builder) finish() error {
	return b.closeDirsUntil("\x00") // a path no directory has: close them all
}

// arrive links the files set aside for object d, now in the batch. at is
// called before each entry (the crash tests' points).
func (b *builder) arrive(ctx context.Context, d manifest.Digest, at func(string)) error {
	for _, i := range b.waiting[d] {
		if err := b.linkAside(ctx, i, at); err != nil {
			return err
		}
	}
	delete(b.waiting, d)
	return nil
}

func (b *builder) linkAside(ctx context.Context, i int, at func(string)) error {
	e := b.files[i]
	if e == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	at(e.Path)
	if err := b.linkFile(b.path(e.Path), e); err != nil {
		return fmt.Errorf("build %s (%s): %w", short(e.Path), e.Type, shortErr(err))
	}
	if err := b.check(e); err != nil {
		return err
	}
	b.files[i] = nil
	return nil
}

// complete builds what was set aside, once the pull holds every object:
// the files not linked as their objects arrived, then their directories,
// innermost first. at is called before each entry (the crash tests' points).
func (b *builder) complete(ctx context.Context, at func(string)) error {
	for i := range b.files {
		if err := b.linkAside(ctx, i, at); err != nil {
			return err
		}
	}
	for _, e := range b.dirs {
		if err := b.finishDir(e); err != nil {
			return err
		}
	}
	b.files, b.waiting, b.dirs = nil, nil, nil
	return nil
}
