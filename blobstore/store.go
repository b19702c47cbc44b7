package blobstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// Digest names an object: the SHA-256 of its bytes.
type Digest = manifest.Digest

// Errors a caller can test for with errors.Is.
var (
	ErrNotFound = errors.New("object not in store")
	ErrMismatch = errors.New("content does not match its declared hash")
	ErrTooLong  = errors.New("more bytes than declared")
	ErrTooShort = errors.New("fewer bytes than declared")
)

// Store is a content-addressed object store rooted at a directory.
type Store struct {
	root string
}

// Open opens (creating if needed) the store at root.
func Open(root string) (*Store, error) {
	lay := LayoutOf(root)
	for _, d := range []string{lay.Objects(), lay.Files(), lay.Staging()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	return &Store{root: root}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// Path is where the object d lives once committed.
func (s *Store) Path(d Digest) string { return LayoutOf(s.root).Object(d) }

func (s *Store) filePath(id Digest) string { return LayoutOf(s.root).File(id) }

// FilePath is where the committed file id lives. A tree builder links it
// directly and calls LinkFile only when that fails, saving a stat per file.
func (s *Store) FilePath(id Digest) string { return s.filePath(id) }

// Has reports whether the object d is committed in the store.
func (s *Store) Has(d Digest) bool {
	_, err := os.Lstat(s.Path(d))
	return err == nil
}

// Open opens the object d for reading.
func (s *Store) Open(d Digest) (*os.File, error) {
	f, err := os.Open(s.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("object %s: %w", d, ErrNotFound)
	}
	return f, err
}

// CleanStaging removes what interrupted batches left behind. Only the holder
// of the store's lock may call it.
func (s *Store) CleanStaging() error {
	dir := LayoutOf(s.root).Staging()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("clean staging: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clean staging: %w", err)
		}
	}
	return nil
}

// Meta is the metadata a file carries in a built tree.
type Meta struct {
	Mode   uint32 // permission bits, 07777
	UID    uint32
	GID    uint32
	Xattrs []manifest.Xattr
}

// Shareable reports whether a file with this metadata may share its inode
// with the store and with other trees: only if no one but its owner can
// write it. A world- or group-writable file (mode 0666, say) is written
// by local users, and through a shared inode they would write the store's
// object and every tree holding those bytes, including a later version's
// root-owned program with the same contents.
func (m Meta) Shareable() bool { return m.Mode&0o022 == 0 }

// MetaOf returns the metadata of a manifest entry.
func MetaOf(e *manifest.Entry) Meta {
	return Meta{Mode: e.Mode, UID: e.UID, GID: e.GID, Xattrs: e.Xattrs}
}

// FileID names the inode holding object d with metadata m (SPEC.md §4). Two
// entries share an inode in built trees exactly when their FileIDs match.
func FileID(d Digest, m Meta) Digest {
	// Built by hand rather than with fmt: this runs once per file of every
	// tree built.
	b := make([]byte, 0, 128)
	b = append(b, "peerup-file-v1\x00"...)
	b = hex.AppendEncode(b, d[:])
	b = append(b, 0)
	b = strconv.AppendUint(b, uint64(m.Mode), 8)
	b = append(b, 0)
	b = strconv.AppendUint(b, uint64(m.UID), 10)
	b = append(b, 0)
	b = strconv.AppendUint(b, uint64(m.GID), 10)
	b = append(b, 0)
	for _, x := range m.Xattrs {
		b = strconv.AppendInt(b, int64(len(x.Name)), 10)
		b = append(b, ':')
		b = append(b, x.Name...)
		b = strconv.AppendInt(b, int64(len(x.Value)), 10)
		b = append(b, ':')
		b = append(b, x.Value...)
	}
	return Digest(sha256.Sum256(b))
}

// Batch stages new objects and files, and makes them durable and visible
// together on Commit. A Batch is safe for concurrent use.
type Batch struct {
	s   *Store
	dir string

	linkMu  sync.Mutex // serialises LinkFile, which checks then creates
	mu      sync.Mutex
	objects map[Digest]bool // staged objects
	order   []Digest        // staged objects in the order they arrived
	// Fault, if set, is called before each rename of Commit (crash tests).
	Fault func(point string)
	// Received, if set, is told of the bytes PutFrom reads from a source,
	// as they arrive: a fetch's progress within a large object.
	Received func(n int64)
	files    map[Digest]bool // staged files
	// Committed objects and files found damaged (Replace, ReplaceFile):
	// never reused, and the fresh copies staged are renamed over them.
	replaceObj  map[Digest]bool
	replaceFile map[Digest]bool
	oldInodes   map[Digest][2]uint64 // the damaged objects' inodes, which other files may share
	done        bool
	committed   bool
}

// Begin starts a batch.
func (s *Store) Begin() (*Batch, error) {
	dir, err := os.MkdirTemp(LayoutOf(s.root).Staging(), "batch-")
	if err != nil {
		return nil, fmt.Errorf("begin batch: %w", err)
	}
	return &Batch{s: s, dir: dir, objects: map[Digest]bool{}, files: map[Digest]bool{},
		replaceObj: map[Digest]bool{}, replaceFile: map[Digest]bool{}, oldInodes: map[Digest][2]uint64{}}, nil
}

// Replace tells the batch that the committed object d holds wrong bytes or
// is missing (a repair found it so): the batch then neither reports it
// held nor reads it, and reuses none of its committed files, which may
// share its inode. Commit renames the fresh copy staged for it over it only
// once that copy is durable, so a crash never leaves the store with less
// than before; other checkout files sharing the damaged inode then leave
// the store.
func (b *Batch) Replace(d Digest) {
	var st unix.Stat_t
	ok := unix.Lstat(b.s.Path(d), &st) == nil
	b.mu.Lock()
	defer b.mu.Unlock()
	b.replaceObj[d] = true
	if ok {
		b.oldInodes[d] = [2]uint64{st.Dev, st.Ino}
	}
}

// ReplaceFile is Replace for a committed checkout file whose inode holds
// wrong bytes or metadata: LinkFile stages a fresh one, which Commit
// renames over it.
func (b *Batch) ReplaceFile(id Digest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.replaceFile[id] = true
}

// Replaces reports whether the committed file id, holding object d, must
// not be linked into a tree: the batch replaces it or its object. A tree
// builder that links committed files directly asks first.
func (b *Batch) Replaces(d, id Digest) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.replaceObj[d] || b.replaceFile[id]
}

func (b *Batch) stagedObject(d Digest) string { return filepath.Join(b.dir, "o-"+d.String()) }
func (b *Batch) stagedFile(id Digest) string  { return filepath.Join(b.dir, "f-"+id.String()) }

// Has reports whether object d is committed or staged in this batch.
func (b *Batch) Has(d Digest) bool {
	b.mu.Lock()
	staged, replaced := b.objects[d], b.replaceObj[d]
	b.mu.Unlock()
	return staged || !replaced && b.s.Has(d)
}

// ObjectPath returns where object d can be read now: staged or committed.
func (b *Batch) ObjectPath(d Digest) (string, error) {
	b.mu.Lock()
	staged, replaced := b.objects[d], b.replaceObj[d]
	b.mu.Unlock()
	if staged {
		return b.stagedObject(d), nil
	}
	p := b.s.Path(d)
	fi, err := os.Lstat(p)
	if err != nil || replaced {
		return "", fmt.Errorf("object %s: %w", d, ErrNotFound)
	}
	// An object whose inode someone else may have written (a store from
	// before files like that were copied, or one chmodded since) is read
	// again before anything is built from it.
	if fi.Mode().Perm()&0o022 != 0 || !fi.Mode().IsRegular() {
		ok, _, err := hashMatches(context.Background(), p, d)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("object %s: %w: its bytes were changed in the store (its inode is writable by others); run peerup verify --repair", d, ErrMismatch)
		}
	}
	return p, nil
}

// Put streams an object whose hash and size are known in advance (from a
// signed manifest) into the batch. It hashes while writing and refuses to
// read past size bytes, so a peer that sends too much is cut off. On any
// error nothing is left behind.
func (b *Batch) Put(ctx context.Context, want Digest, size int64, r io.Reader) error {
	if b.Has(want) {
		return nil
	}
	got, n, tmp, err := b.write(ctx, io.LimitReader(r, size+1), size+1)
	if err != nil {
		return err
	}
	if err := verify(want, size, got, n); err != nil {
		os.Remove(tmp)
		return err
	}
	return b.adopt(tmp, got)
}

// verify compares what arrived with what the manifest declares.
func verify(want Digest, size int64, got Digest, n int64) error {
	switch {
	case n > size:
		return fmt.Errorf("object %s: %w (%d)", want, ErrTooLong, size)
	case n < size:
		return fmt.Errorf("object %s: %w: got %d of %d", want, ErrTooShort, n, size)
	case got != want:
		return fmt.Errorf("object %s: %w: got %s", want, ErrMismatch, got)
	}
	return nil
}

// Add streams an object of unknown hash (a publisher reading a tree) into the
// batch and returns its digest and size.
func (b *Batch) Add(ctx context.Context, r io.Reader) (Digest, int64, error) {
	got, n, tmp, err := b.write(ctx, r, -1)
	if err != nil {
		return got, n, err
	}
	if b.Has(got) {
		os.Remove(tmp)
		return got, n, nil
	}
	return got, n, b.adopt(tmp, got)
}

// PutFile copies a file of known hash (a peer's object or a decoded patch
// written elsewhere) into the batch, with the same checks as Put.
func (b *Batch) PutFile(ctx context.Context, want Digest, size int64, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return b.Put(ctx, want, size, f)
}

// ctxReader stops a copy when its context ends, between reads.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ContextReader is r stopping when ctx ends, between reads: for the long
// copies of other packages (an export's read-back).
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (b *Batch) write(ctx context.Context, r io.Reader, limit int64) (Digest, int64, string, error) {
	var d Digest
	f, err := os.CreateTemp(b.dir, "tmp-")
	if err != nil {
		return d, 0, "", fmt.Errorf("stage object: %w", err)
	}
	h := sha256.New()
	buf := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), ctxReader{ctx, r}, *buf)
	copyBufs.Put(buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return d, n, "", fmt.Errorf("stage object: %w", err)
	}
	h.Sum(d[:0])
	return d, n, f.Name(), nil
}

func (b *Batch) adopt(tmp string, d Digest) error {
	dst := b.stagedObject(d)
	// Objects are read-only: nothing should ever write through a name that
	// promises a hash.
	if err := os.Chmod(tmp, 0o444); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("stage object: %w", err)
	}
	b.markStaged(d)
	return nil
}

func (b *Batch) markStaged(d Digest) {
	b.mu.Lock()
	if !b.objects[d] {
		b.objects[d] = true
		b.order = append(b.order, d)
	}
	b.mu.Unlock()
}

// Staged lists the objects staged in this batch from the from'th on, in
// the order they arrived, and how many there are in all: a neighbour asks
// again with that count and learns only what is new.
func (b *Batch) Staged(from int) ([]Digest, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if from < 0 || from > len(b.order) {
		from = len(b.order)
	}
	return append([]Digest(nil), b.order[from:]...), len(b.order)
}

// StagedPath returns the path of object d if it is staged (verified but not
// yet committed) in this batch.
func (b *Batch) StagedPath(d Digest) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.objects[d] || b.done {
		return "", false
	}
	return b.stagedObject(d), true
}

// LinkFile returns the path of an inode holding object d with metadata m,
// ready to be hard-linked into a tree. It reuses a committed file, else the
// object's own inode when no other metadata has claimed it, else a copy.
func (b *Batch) LinkFile(d Digest, m Meta) (string, error) {
	b.linkMu.Lock()
	defer b.linkMu.Unlock()
	id := FileID(d, m)
	replace := b.Replaces(d, id)
	if p := b.s.filePath(id); !replace && exists(p) {
		return p, nil
	}
	b.mu.Lock()
	staged := b.files[id]
	b.mu.Unlock()
	if staged {
		return b.stagedFile(id), nil
	}
	src, err := b.ObjectPath(d)
	if err != nil {
		return "", err
	}
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return "", fmt.Errorf("object %s: %w", d, err)
	}
	dst := b.stagedFile(id)
	if st.Nlink == 1 && m.Shareable() {
		// Nothing else links the object yet: give it this metadata and let
		// the tree share the object's inode, so the bytes are stored once.
		if err := SetMeta(src, m); err != nil {
			return "", fmt.Errorf("object %s: %w", d, err)
		}
		err = os.Link(src, dst)
	} else {
		err = CopyWithMeta(src, dst, m)
	}
	if err != nil {
		return "", fmt.Errorf("file for object %s: %w", d, err)
	}
	b.mu.Lock()
	b.files[id] = true
	if replace {
		b.replaceFile[id] = true // renamed over the damaged one on Commit
	}
	b.mu.Unlock()
	return dst, nil
}

// CopyWithMeta copies src to a new inode at dst with metadata m, whole or
// not at all: for entries that cannot share an inode.
func CopyWithMeta(src, dst string, m Meta) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = SetMeta(tmp, m)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// SetMeta gives an entry the owner, mode, xattrs and fixed mtime it has in a
// built tree.
func SetMeta(path string, m Meta) error { return SetMetaOwned(path, m, -1, -1) }

// SetMetaOwned is SetMeta for an entry known to belong to uid:gid already
// (a tree builder's fresh entries), which then skips the chown.
func SetMetaOwned(path string, m Meta, uid, gid int) error {
	// chown first: it clears setuid and setgid bits.
	if int(m.UID) != uid || int(m.GID) != gid {
		if err := os.Lchown(path, int(m.UID), int(m.GID)); err != nil {
			return fmt.Errorf("set owner %d:%d: %w (building files owned by others needs root)", m.UID, m.GID, err)
		}
	}
	if err := unix.Chmod(path, m.Mode); err != nil {
		return fmt.Errorf("set mode %04o: %w", m.Mode, err)
	}
	for _, x := range m.Xattrs {
		if err := unix.Lsetxattr(path, x.Name, x.Value, 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", x.Name, err)
		}
	}
	return FixMtime(path)
}

// FixMtime sets the fixed mtime every built entry carries (the epoch, as
// OSTree does): hard links share one inode, so no tree may have its own.
func FixMtime(path string) error {
	ts := []unix.Timespec{{Sec: 0}, {Sec: 0}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set mtime: %w", err)
	}
	return nil
}

// renameNoReplace renames src to dst unless dst exists (fs.ErrExist), in
// one system call: a commit moves hundreds of objects, and a stat before
// each rename (and the one os.Rename makes) doubled its system calls.
// Where the filesystem cannot refuse to replace, it checks first, as
// commits always did.
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if exists(dst) {
			return fs.ErrExist
		}
		err = unix.Rename(src, dst)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// Commit makes every staged object and file durable, then visible under its
// name. Callers that wrote other data beside the batch (a tree linking to
// staged files) rely on Commit's syncfs covering it too.
func (b *Batch) Commit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return errors.New("batch already finished")
	}
	if b.Fault != nil {
		b.Fault("syncfs")
	}
	if err := fsutil.Syncfs(b.s.root); err != nil {
		return err
	}
	dirs := map[string]bool{}
	move := func(src, dst string, replace bool) error {
		if b.Fault != nil {
			b.Fault("commit " + filepath.Base(dst))
		}
		rename := renameNoReplace
		if replace {
			// A damaged copy goes only now, its durable replacement
			// taking its name in one step.
			rename = os.Rename
		}
		dir := filepath.Dir(dst)
		err := rename(src, dst)
		if errors.Is(err, fs.ErrNotExist) && !dirs[dir] {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			err = rename(src, dst)
		}
		if errors.Is(err, fs.ErrExist) {
			// Same name, same verified content: keep the one in place.
			return os.Remove(src)
		}
		if err == nil {
			dirs[dir] = true
		}
		return err
	}
	for d := range b.objects {
		if err := move(b.stagedObject(d), b.s.Path(d), b.replaceObj[d]); err != nil {
			return fmt.Errorf("commit object %s: %w", d, err)
		}
	}
	for id := range b.files {
		if err := move(b.stagedFile(id), b.s.filePath(id), b.replaceFile[id]); err != nil {
			return fmt.Errorf("commit file %s: %w", id, err)
		}
	}
	if err := b.dropSharing(dirs); err != nil {
		return err
	}
	for d := range dirs {
		if err := fsutil.FsyncDir(d); err != nil {
			return err
		}
	}
	b.done, b.committed = true, true
	os.RemoveAll(b.dir)
	return nil
}

// dropSharing removes the committed files still linking a replaced
// object's damaged inode (those of versions no one keeps, which no repair
// restaged): a later tree would link them. It runs once the replacements
// are in place, and only when an object was replaced. The caller holds mu.
func (b *Batch) dropSharing(dirs map[string]bool) error {
	old := map[[2]uint64]bool{}
	for d, ino := range b.oldInodes {
		if b.objects[d] {
			old[ino] = true
		}
	}
	if len(old) == 0 {
		return nil
	}
	if b.Fault != nil {
		b.Fault("drop damaged files")
	}
	err := filepath.WalkDir(LayoutOf(b.s.root).Files(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || !old[[2]uint64{st.Dev, st.Ino}] {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		dirs[filepath.Dir(p)] = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit: drop files of damaged objects: %w", err)
	}
	return nil
}

// Committed reports whether Commit succeeded.
func (b *Batch) Committed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.committed
}

// Abort drops everything staged. It is safe to call after Commit.
func (b *Batch) Abort() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	os.RemoveAll(b.dir)
}

// Salvage moves into b the objects that interrupted batches had already
// verified, so a restarted fetch does not fetch them again. Their bytes may
// not have reached the disk before the interruption, so each is hashed again
// and kept only if it still matches its name. Everything else those batches
// left is removed. Only the holder of the store's lock may call it.
func (b *Batch) Salvage(ctx context.Context) (n int, size int64, err error) {
	dir := LayoutOf(b.s.root).Staging()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("salvage: %w", err)
	}
	for _, e := range ents {
		old := filepath.Join(dir, e.Name())
		if old == b.dir || isReceived(e.Name()) {
			continue // the live batch, or a signed file its pull holds
		}
		files, _ := os.ReadDir(old)
		for _, f := range files {
			name, ok := strings.CutPrefix(f.Name(), "o-")
			if !ok {
				continue
			}
			d, err := manifest.ParseDigest(name)
			if err != nil || b.Has(d) {
				continue
			}
			ok, sz, err := hashMatches(ctx, filepath.Join(old, f.Name()), d)
			if err != nil {
				return n, size, err
			}
			if ok && os.Rename(filepath.Join(old, f.Name()), b.stagedObject(d)) == nil {
				b.markStaged(d)
				n++
				size += sz
			}
		}
		b.salvageParts(old)
		if err := os.RemoveAll(old); err != nil {
			return n, size, fmt.Errorf("salvage: %w", err)
		}
	}
	return n, size, nil
}

func hashMatches(ctx context.Context, path string, d Digest) (bool, int64, error) {
	got, n, err := hashFile(ctx, path)
	if err != nil {
		if ctx.Err() != nil {
			return false, 0, ctx.Err()
		}
		return false, 0, nil // unreadable: not salvageable
	}
	return got == d, n, nil
}

// Suspend ends a batch that failed part-way but keeps the objects it had
// verified, and the partial downloads of large ones, in staging for Salvage
// to pick up next time: on a flaky link a second attempt should not fetch
// them again. Everything else is removed.
func (b *Batch) Suspend() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	kept := 0
	ents, _ := os.ReadDir(b.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "o-") || strings.HasPrefix(e.Name(), "p-") {
			kept++
			continue
		}
		os.Remove(filepath.Join(b.dir, e.Name()))
	}
	if kept == 0 {
		os.Remove(b.dir)
	}
}

// Objects lists every committed object, for gc and verify.
func (s *Store) Objects() ([]Digest, error) {
	var out []Digest
	err := filepath.WalkDir(LayoutOf(s.root).Objects(), func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			return nil
		}
		if d, err := manifest.ParseDigest(de.Name()); err == nil && !strings.HasPrefix(de.Name(), ".") {
			out = append(out, d)
		}
		return nil
	})
	return out, err
}
