package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/manifest"
)

// Problem is one way a kept tree differs from its manifest.
type Problem struct {
	Version uint64
	Path    string
	What    string
	// Object is set when the file's bytes are wrong: the object to restore.
	Object manifest.Digest
	entry  *manifest.Entry
}

func (p Problem) String() string {
	return fmt.Sprintf("version %d: %s: %s", p.Version, p.Path, p.What)
}

// Verify checks every kept tree (current, previous, staged) against its
// manifest: type, mode, owner, symlink target, device number, and each
// file's size and SHA-256. Hard links make one in-place edit show in every
// tree that shares the file, so each such path is reported. etc/ is the
// node's and matches no manifest; there only a file sharing its inode is
// reported. It reads; it changes nothing.
func (s *Sysroot) Verify(ctx context.Context) ([]Problem, error) {
	unlock, err := s.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.verifyLocked(ctx)
}

func (s *Sysroot) verifyLocked(ctx context.Context) ([]Problem, error) {
	st, err := s.Status()
	if err != nil {
		return nil, err
	}
	var out []Problem
	hashed := map[[2]uint64]manifest.Digest{} // (dev, ino) → digest: shared inodes are read once
	seen := map[uint64]bool{}
	for _, v := range []uint64{st.Current, st.Previous, st.Staged} {
		if v == 0 || seen[v] {
			continue
		}
		seen[v] = true
		mf, err := s.repo.OpenVersion(st.Image, v)
		if err != nil {
			return nil, err
		}
		defer mf.Close() // at most three, one per version
		r, err := manifest.NewReader(mf.Reader())
		if err != nil {
			return nil, err
		}
		root := s.TreePath(v)
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			e, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
			p := root
			if e.Path != "." {
				p = filepath.Join(root, filepath.FromSlash(e.Path))
			}
			if _, ok := override(s.LocalDir(), e); ok || isEtc(e.Path) {
				continue // the node's own version, by design (local/, /etc)
			}
			if what, bad := checkEntry(p, e, hashed); bad {
				pr := Problem{Version: v, Path: e.Path, What: what, entry: e}
				if e.Type == manifest.TypeFile && strings.HasPrefix(what, "content") {
					pr.Object = e.SHA256
				}
				out = append(out, pr)
			}
		}
		links, err := etcLinks(ctx, v, root)
		if err != nil {
			return nil, err
		}
		out = append(out, links...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Version > out[j].Version })
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
		key := [2]uint64{st.Dev, st.Ino}
		d, ok := hashed[key]
		if !ok {
			var err error
			if d, err = hashPath(p); err != nil {
				return "unreadable", true
			}
			hashed[key] = d
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
			out = append(out, Problem{Version: v, Path: filepath.ToSlash(rel),
				What: fmt.Sprintf("hard-linked %d times: /etc must be the node's own copy, linked to no store object or other tree", st.Nlink)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify version %d: etc: %w", v, err)
	}
	return out, nil
}

// Repair restores what Verify found wrong: bytes are fetched anew from src
// and checked against the manifest, then each damaged path is replaced by
// a fresh inode with a rename. It is the one operation that changes a built
// tree, and only to make it match its signed manifest again, so it leaves
// etc/ (the node's) alone. The damaged
// inode also leaves the store, so later trees link the good copy.
func (s *Sysroot) Repair(ctx context.Context, src Source) ([]Problem, error) {
	unlock, err := s.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	probs, err := s.verifyLocked(ctx)
	if err != nil || len(probs) == 0 {
		return probs, err
	}
	b, err := s.repo.Begin()
	if err != nil {
		return nil, err
	}
	defer b.Abort()
	// Damaged objects leave the store first: their inode is the bad one.
	bad := map[manifest.Digest]bool{}
	for _, p := range probs {
		if !p.Object.IsZero() && !bad[p.Object] {
			bad[p.Object] = true
			os.Remove(s.repo.Path(p.Object))
		}
	}
	var etcLeft []string
	for _, p := range probs {
		e := p.entry
		if isEtc(p.Path) {
			// The node's own: repair writes only what a manifest vouches for.
			etcLeft = append(etcLeft, p.Path)
			continue
		}
		if e.Type != manifest.TypeFile {
			return probs, fmt.Errorf("repair: %s is not a file's content (%s); reinstall the version", p.Path, p.What)
		}
		if !b.Has(e.SHA256) {
			if err := src.FetchObject(ctx, b, e.SHA256, e.Size); err != nil {
				return probs, fmt.Errorf("repair %s: %w", p.Path, err)
			}
		}
		op, err := b.ObjectPath(e.SHA256)
		if err != nil {
			return probs, err
		}
		dst := filepath.Join(s.TreePath(p.Version), filepath.FromSlash(e.Path))
		tmp := dst + ".peerup-repair"
		os.Remove(tmp)
		if err := copyFile(op, tmp, e); err != nil {
			return probs, fmt.Errorf("repair %s: %w", p.Path, err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			os.Remove(tmp)
			return probs, fmt.Errorf("repair %s: %w", p.Path, err)
		}
		// The checkout file for this entry was the damaged inode too.
		os.Remove(s.repo.FilePath(blobstore.FileID(e.SHA256, blobstore.MetaOf(e))))
	}
	if err := b.Commit(); err != nil {
		return probs, err
	}
	if len(etcLeft) > 0 {
		return probs, fmt.Errorf("repair: left %s as it is: /etc is the node's own and repair does not write there; replace each file with a copy of itself to unlink it", strings.Join(etcLeft, ", "))
	}
	return probs, nil
}

func isRegular(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}
