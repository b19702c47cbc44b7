package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// Problem is one way a kept tree, or the store it was built from, differs
// from its manifest.
type Problem struct {
	Version uint64
	Path    string
	What    string
	// Object is set when the file's bytes are wrong, in the tree or in the
	// store: the object to restore.
	Object manifest.Digest
	entry  *manifest.Entry
	kind   problemKind
}

// problemKind says where a problem is, and so what repair does about it.
type problemKind uint8

const (
	inTree    problemKind = iota // a tree's entry: rebuilt from the store
	inStore                      // the object a kept version needs: fetched anew
	inFiles                      // a checkout file in the store: made anew
	stray                        // a file no manifest lists, left by an older repair: removed
	etcShared                    // an etc/ file sharing its inode: the node's own to fix
)

func (p Problem) String() string {
	return fmt.Sprintf("version %d: %s: %s", p.Version, p.Path, p.What)
}

// Verify checks every kept tree (current, previous, staged) against its
// manifest: type, mode, owner, symlink target, device number, and each
// file's size and SHA-256. Hard links make one in-place edit show in every
// tree that shares the file, so each such path is reported. etc/ is the
// node's and matches no manifest; there only a file sharing its inode is
// reported. It checks the store too: every object a kept version needs is
// there with its bytes, and so is every checkout file its trees link, with
// its metadata; a tree matching its manifest over a store that lost its
// objects cannot be built from, exported or served. It reads; it changes
// nothing.
func (s *Sysroot) Verify(ctx context.Context) ([]Problem, error) {
	unlock, err := s.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	in, err := s.inspect(ctx)
	if err != nil {
		return nil, err
	}
	return in.probs, nil
}

// inspection is what verify found, and what it read on the way.
type inspection struct {
	s     *Sysroot
	probs []Problem
	// badFiles are the checkout files to make anew, with an entry each
	// describes: the damaged ones, reported or sharing a damaged tree's
	// inode.
	badFiles map[manifest.Digest]*manifest.Entry
	hashed   map[[2]uint64]manifest.Digest // (dev, ino) → digest: shared inodes are read once
	objects  map[manifest.Digest]bool      // checked already
	files    map[manifest.Digest]bool
}

func (s *Sysroot) inspect(ctx context.Context) (*inspection, error) {
	st, err := s.Status()
	if err != nil {
		return nil, err
	}
	in := &inspection{s: s, badFiles: map[manifest.Digest]*manifest.Entry{}, hashed: map[[2]uint64]manifest.Digest{},
		objects: map[manifest.Digest]bool{}, files: map[manifest.Digest]bool{}}
	seen := map[uint64]bool{}
	for _, v := range []uint64{st.Current, st.Previous, st.Staged} {
		if v == 0 || seen[v] {
			continue
		}
		seen[v] = true
		if err := in.version(ctx, st.Image, v); err != nil {
			return nil, err
		}
	}
	sort.SliceStable(in.probs, func(i, j int) bool { return in.probs[i].Version > in.probs[j].Version })
	return in, nil
}

func (in *inspection) add(v uint64, e *manifest.Entry, kind problemKind, what string) {
	p := Problem{Version: v, Path: e.Path, What: what, entry: e, kind: kind}
	if kind == inStore || kind == inTree && e.Type == manifest.TypeFile && strings.HasPrefix(what, "content") {
		p.Object = e.SHA256
	}
	in.probs = append(in.probs, p)
}

func (in *inspection) version(ctx context.Context, image string, v uint64) error {
	root := in.s.TreePath(v)
	leftovers, err := repairLeftovers(ctx, root)
	if err != nil {
		return err
	}
	err = eachVersionEntry(in.s.repo, image, v, func(e *manifest.Entry) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if len(leftovers) > 0 {
			delete(leftovers, e.Path) // the image's own file, whatever its name
		}
		if e.Type == manifest.TypeFile {
			in.object(v, e) // every file's, /etc's and local/'s too: a pull fetches them all
		}
		if _, ok := override(in.s.LocalDir(), e); ok || isEtc(e.Path) {
			return nil // the node's own version, by design (local/, /etc)
		}
		p := root
		if e.Path != "." {
			p = filepath.Join(root, filepath.FromSlash(e.Path))
		}
		what, bad := checkEntry(p, e, in.hashed)
		if bad {
			in.add(v, e, inTree, what)
		}
		if e.Type == manifest.TypeFile && linksStore(e) {
			in.file(v, e, bad)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range slices.Sorted(maps.Keys(leftovers)) {
		in.probs = append(in.probs, Problem{Version: v, Path: p, kind: stray,
			What: "left by an interrupted repair of an older peerup: the manifest lists no such file"})
	}
	links, err := etcLinks(ctx, v, root)
	if err != nil {
		return err
	}
	in.probs = append(in.probs, links...)
	return nil
}

// object checks the store's copy of e's object, once per object.
func (in *inspection) object(v uint64, e *manifest.Entry) {
	if in.objects[e.SHA256] {
		return
	}
	in.objects[e.SHA256] = true
	p := in.s.repo.Path(e.SHA256)
	var st unix.Stat_t
	what := ""
	switch {
	case unix.Lstat(p, &st) != nil:
		what = "missing from the store"
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		what = "in the store is not a regular file"
	case st.Size != e.Size:
		what = fmt.Sprintf("in the store has %d bytes, want %d", st.Size, e.Size)
	default:
		if d, err := hashInode(p, &st, in.hashed); err != nil {
			what = "in the store is unreadable"
		} else if d != e.SHA256 {
			what = fmt.Sprintf("in the store holds other bytes (sha256 %s)", d)
		}
	}
	if what != "" {
		in.add(v, e, inStore, fmt.Sprintf("object %s %s", e.SHA256, what))
	}
}

// file checks the checkout file a tree links for e, if the store has one
// (a build makes what is missing). A damaged one is reported unless the
// tree's entry was (treeBad): that is most likely the very same inode.
func (in *inspection) file(v uint64, e *manifest.Entry, treeBad bool) {
	id := blobstore.FileID(e.SHA256, blobstore.MetaOf(e))
	if in.files[id] {
		return
	}
	in.files[id] = true
	p := in.s.repo.FilePath(id)
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil {
		return
	}
	what := checkMeta(p, e, &st)
	if what == "" {
		if d, err := hashInode(p, &st, in.hashed); err != nil {
			what = "unreadable"
		} else if d != e.SHA256 {
			what = fmt.Sprintf("content changed in place (sha256 %s)", d)
		}
	}
	if what == "" {
		return
	}
	in.badFiles[id] = e
	if !treeBad {
		in.add(v, e, inFiles, "its checkout file in the store: "+what)
	}
}

// repairSuffix names the temporaries older peerups' repairs made beside a
// tree's path, as <path>.peerup-repair and <path>.peerup-repair.tmp; an
// interrupted one left them in the tree.
const repairSuffix = ".peerup-repair"

// repairLeftovers lists the files under root, outside its etc/ (where no
// repair ever wrote), named as such temporaries. The caller drops those
// its manifest lists: an image may name a file so.
func repairLeftovers(ctx context.Context, root string) (map[string]bool, error) {
	out := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // no tree: checkEntry reports it
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() {
			if p == filepath.Join(root, etcDir) {
				return fs.SkipDir
			}
			return nil
		}
		if n := d.Name(); strings.HasSuffix(n, repairSuffix) || strings.HasSuffix(n, repairSuffix+".tmp") {
			rel, _ := filepath.Rel(root, p)
			out[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", root, err)
	}
	return out, nil
}

func checkEntry(p string, e *manifest.Entry, hashed map[[2]uint64]manifest.Digest) (string, bool) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return "missing", true
	}
	if d := checkMeta(p, e, &st); d != "" {
		return d, true
	}
	if e.Type == manifest.TypeFile {
		d, err := hashInode(p, &st, hashed)
		if err != nil {
			return "unreadable", true
		}
		if d != e.SHA256 {
			links := ""
			if st.Nlink > 1 {
				links = fmt.Sprintf("; the file is hard-linked %d times, so every tree sharing it is affected", st.Nlink)
			}
			return fmt.Sprintf("content changed in place (sha256 %s)%s", d, links), true
		}
	}
	return "", false
}

// hashInode is the SHA-256 of the file p, whose lstat is st, read once per
// inode however many names it has.
func hashInode(p string, st *unix.Stat_t, hashed map[[2]uint64]manifest.Digest) (manifest.Digest, error) {
	key := [2]uint64{st.Dev, st.Ino}
	if d, ok := hashed[key]; ok {
		return d, nil
	}
	d, err := hashPath(p)
	if err == nil {
		hashed[key] = d
	}
	return d, err
}

// checkMeta compares what st (lstat of p) says with entry e: type, mode,
// owner, symlink target, device number, a file's size and the xattrs e
// declares. It returns the difference, or "". The builder checks every
// entry with it as built, verify before hashing.
func checkMeta(p string, e *manifest.Entry, st *unix.Stat_t) string {
	kind := map[manifest.Type]uint32{manifest.TypeDir: unix.S_IFDIR, manifest.TypeFile: unix.S_IFREG, manifest.TypeSymlink: unix.S_IFLNK,
		manifest.TypeFifo: unix.S_IFIFO, manifest.TypeChar: unix.S_IFCHR, manifest.TypeBlock: unix.S_IFBLK}[e.Type]
	if st.Mode&unix.S_IFMT != kind {
		return "type changed"
	}
	if e.Type != manifest.TypeSymlink && st.Mode&07777 != e.Mode {
		return fmt.Sprintf("mode %04o, want %04o", st.Mode&07777, e.Mode)
	}
	if st.Uid != e.UID || st.Gid != e.GID {
		return fmt.Sprintf("owner %d:%d, want %d:%d", st.Uid, st.Gid, e.UID, e.GID)
	}
	switch e.Type {
	case manifest.TypeSymlink:
		if t, _ := os.Readlink(p); t != e.Target {
			return fmt.Sprintf("symlink to %q, want %q", t, e.Target)
		}
	case manifest.TypeChar, manifest.TypeBlock:
		if unix.Major(st.Rdev) != e.Major || unix.Minor(st.Rdev) != e.Minor {
			return fmt.Sprintf("device %d:%d, want %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev), e.Major, e.Minor)
		}
	case manifest.TypeFile:
		if st.Size != e.Size {
			return fmt.Sprintf("content changed (size %d, want %d)", st.Size, e.Size)
		}
	}
	if len(e.Xattrs) > 0 {
		have, err := manifest.ReadXattrs(p)
		if err != nil {
			return "xattrs unreadable"
		}
		for _, x := range e.Xattrs {
			i := slices.IndexFunc(have, func(h manifest.Xattr) bool { return h.Name == x.Name })
			if i < 0 || !bytes.Equal(have[i].Value, x.Value) {
				return fmt.Sprintf("xattr %s missing or different", x.Name)
			}
		}
	}
	return ""
}

// etcLinks reports the files of a tree's etc/ that share their inode with
// another name: the node writes there, so a shared inode would carry its
// writes into the store, other trees and what neighbours fetch. A link count
// of 1 is exactly "shares with nothing", whoever the other names are.
func etcLinks(ctx context.Context, v uint64, root string) ([]Problem, error) {
	var out []Problem
	err := filepath.WalkDir(filepath.Join(root, etcDir), func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // no etc/, or the running system just removed the file
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		if st.Nlink > 1 {
			rel, _ := filepath.Rel(root, p)
			out = append(out, Problem{Version: v, Path: filepath.ToSlash(rel), kind: etcShared,
				What: fmt.Sprintf("hard-linked %d times: /etc must be the node's own copy, linked to no store object or other tree", st.Nlink)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify version %d: etc: %w", v, err)
	}
	return out, nil
}

// Repair restores what Verify found wrong, in the order an update works,
// so that an interruption at any point leaves nothing worse than it found
// and the next run finishes the job (SPEC.md §15). It first removes what
// an interrupted run left (cleanup; staging; older peerups' temporaries in
// the trees, which no manifest lists). Then it fetches every object the
// store lacks or holds damaged, checked against the manifest, into a
// staging batch, and makes each damaged entry anew beside the trees, with
// the builder's own code: linked from the store, or copied where a build
// copies. The batch's one syncfs makes all of it durable before its commit
// renames the fresh objects and checkout files over the damaged ones; only
// then is each fresh entry renamed over its damaged path. Nothing is
// removed before its replacement is on the disk.
//
// It is the one operation that changes a built tree, and only to make it
// match its signed manifest again, so it leaves etc/ (the node's) alone,
// and a directory, which a rename cannot replace whole.
func (s *Sysroot) Repair(ctx context.Context, src Source) ([]Problem, error) {
	unlock, err := s.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.cleanup(); err != nil {
		return nil, err
	}
	in, err := s.inspect(ctx)
	if err != nil || len(in.probs) == 0 {
		return nil, err
	}
	probs := in.probs
	var fix []Problem // tree entries to make anew
	var fetch []*manifest.Entry
	var left, etcLeft []string
	for _, p := range probs {
		switch p.kind {
		case inTree:
			if p.entry.Type == manifest.TypeDir {
				left = append(left, p.String())
				continue
			}
			fix = append(fix, p)
			if p.entry.Type == manifest.TypeFile {
				fetch = append(fetch, p.entry) // if the store lacks it
			}
		case inStore:
			fetch = append(fetch, p.entry)
		case stray:
			if err := s.removeLeftover(p); err != nil {
				return probs, err
			}
		case etcShared:
			// The node's own: repair writes only what a manifest vouches for.
			etcLeft = append(etcLeft, p.Path)
		}
	}
	if len(fetch) > 0 || len(fix) > 0 || len(in.badFiles) > 0 {
		if err := s.restore(ctx, src, in, fetch, fix); err != nil {
			return probs, err
		}
	}
	if len(left) > 0 {
		return probs, fmt.Errorf("repair: repaired the rest, but a built directory is not replaced (a rename cannot do it whole): reinstall the version: %s", strings.Join(left, "; "))
	}
	if len(etcLeft) > 0 {
		return probs, fmt.Errorf("repair: left %s as it is: /etc is the node's own and repair does not write there; replace each file with a copy of itself to unlink it", strings.Join(etcLeft, ", "))
	}
	return probs, nil
}

// restore does the repair's work on the store and the trees (Repair).
func (s *Sysroot) restore(ctx context.Context, src Source, in *inspection, fetch []*manifest.Entry, fix []Problem) error {
	b, err := s.repo.Begin()
	if err != nil {
		return err
	}
	b.Fault = s.Fault
	// A failed repair keeps what it fetched for the next one; after the
	// commit this does nothing.
	defer b.Suspend()
	for _, p := range in.probs {
		if p.kind == inStore {
			b.Replace(p.Object)
		}
	}
	for id := range in.badFiles {
		b.ReplaceFile(id)
	}
	// Only now: an interrupted repair's staged replacements are taken up.
	if _, _, err := b.Salvage(ctx); err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	// An object the source no longer has (an old previous version's) is
	// left as it is, and with it what needs it; the rest is repaired.
	var unfetched []string
	failed := map[manifest.Digest]bool{}
	for _, e := range fetch {
		if failed[e.SHA256] || b.Has(e.SHA256) {
			continue
		}
		s.at("repair fetch " + e.Path)
		if err := src.FetchObject(ctx, b, e.SHA256, e.Size); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			failed[e.SHA256] = true
			unfetched = append(unfetched, fmt.Sprintf("%s (%v)", e.Path, err))
		}
	}
	for _, e := range in.badFiles {
		// Made anew even where no tree entry needs one now: the next build
		// links it.
		if failed[e.SHA256] {
			continue
		}
		if _, err := b.LinkFile(e.SHA256, blobstore.MetaOf(e)); err != nil {
			return fmt.Errorf("repair %s: %w", e.Path, err)
		}
	}
	fix = slices.DeleteFunc(fix, func(p Problem) bool { return p.entry.Type == manifest.TypeFile && failed[p.entry.SHA256] })
	// Each entry is made beside the trees, where every start of peerup
	// clears what an interrupted run left, and never inside a kept tree.
	var tmp string
	bld := &builder{store: s.repo.Store, batch: b, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), local: s.LocalDir()}
	made := func(i int) string { return filepath.Join(tmp, strconv.Itoa(i)) }
	if len(fix) > 0 {
		s.at("repair mkdir")
		if tmp, err = os.MkdirTemp(filepath.Join(s.dir, treesDir), tmpPrefix+"repair-"); err != nil {
			return fmt.Errorf("repair: %w", err)
		}
		defer removeTree(tmp) // empty once every entry is in place
	}
	for i, p := range fix {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.at("repair build " + p.Path)
		if err := bld.create(made(i), p.entry, ""); err != nil {
			return fmt.Errorf("repair %s: %w", p.Path, shortErr(err))
		}
		if err := bld.checkAt(made(i), p.entry); err != nil {
			return fmt.Errorf("repair: %w", err)
		}
	}
	// One syncfs makes the fetched objects and the entries made durable;
	// then the fresh objects and checkout files take the damaged ones'
	// names.
	if err := b.Commit(); err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	dirs := map[string]bool{}
	for i, p := range fix {
		dst := filepath.Join(s.TreePath(p.Version), filepath.FromSlash(p.Path))
		s.at("repair rename " + p.Path)
		if err := os.Rename(made(i), dst); err != nil {
			return fmt.Errorf("repair %s: %w (reinstall the version)", p.Path, shortErr(err))
		}
		dirs[filepath.Dir(dst)] = true
	}
	if err := settleDirs(dirs); err != nil {
		return err
	}
	if len(unfetched) > 0 {
		return fmt.Errorf("repair: repaired the rest, but %s could not give the objects of %s", src, strings.Join(unfetched, "; "))
	}
	return nil
}

// settleDirs gives the tree directories a repair renamed into the mtime a
// build gives them, and makes the renames durable.
func settleDirs(dirs map[string]bool) error {
	for d := range dirs {
		if err := blobstore.FixMtime(d); err != nil {
			return fmt.Errorf("repair: %s: %w", d, err)
		}
		if err := fsutil.FsyncDir(d); err != nil {
			return fmt.Errorf("repair: %w", err)
		}
	}
	return nil
}

// removeLeftover removes a temporary an older peerup's interrupted repair
// left in a tree: no manifest lists it, so nothing is lost, and it would
// block every later repair of its path.
func (s *Sysroot) removeLeftover(p Problem) error {
	path := filepath.Join(s.TreePath(p.Version), filepath.FromSlash(p.Path))
	s.at("remove leftover " + p.Path)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("repair: %w", err)
	}
	return settleDirs(map[string]bool{filepath.Dir(path): true})
}

func isRegular(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}
