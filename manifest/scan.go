package manifest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Scan walks the tree at root without following symlinks and returns its
// entries in manifest order. File digests are left zero: the caller hashes
// the files (in parallel, and while storing them).
func Scan(ctx context.Context, root string) ([]Entry, error) {
	var out []Entry
	var walk func(rel string) error
	walk = func(rel string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		full := filepath.Join(root, rel)
		e, err := statEntry(full, rel)
		if err != nil {
			return err
		}
		out = append(out, *e)
		if len(out) > MaxEntries {
			return fmt.Errorf("scan %s: more than %d entries", root, MaxEntries)
		}
		if e.Type != TypeDir {
			return nil
		}
		names, err := readNames(full)
		if err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		// Byte order of names plus recursion gives the depth-first manifest
		// order (ComparePaths).
		sort.Strings(names)
		for _, n := range names {
			child := n
			if rel != "." {
				child = rel + "/" + n
			}
			if err := walk(child); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk("."); err != nil {
		return nil, err
	}
	return out, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func statEntry(full, rel string) (*Entry, error) {
	var st unix.Stat_t
	if err := unix.Lstat(full, &st); err != nil {
		return nil, fmt.Errorf("scan %s: %w", full, err)
	}
	e := &Entry{Path: rel, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = TypeDir
	case unix.S_IFREG:
		e.Type = TypeFile
		e.Size = st.Size
	case unix.S_IFLNK:
		e.Type = TypeSymlink
		t, err := os.Readlink(full)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", full, err)
		}
		e.Target = t
	case unix.S_IFIFO:
		e.Type = TypeFifo
	case unix.S_IFCHR, unix.S_IFBLK:
		e.Type = TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			e.Type = TypeBlock
		}
		e.Major, e.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	default:
		return nil, fmt.Errorf("scan %s: unsupported file type (sockets and the like have no place in an image)", full)
	}
	if e.Type != TypeSymlink {
		x, err := ReadXattrs(full)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", full, err)
		}
		// A publisher's tree may hold attributes a manifest does not carry:
		// Debian's systemd sets a POSIX ACL on /var/log/journal, which its
		// tmpfiles.d sets again at every boot. They are left out, as
		// timestamps are, rather than refusing the tree.
		e.Xattrs = slices.DeleteFunc(x, func(a Xattr) bool { return !XattrCarried(a.Name) })
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("scan %s: %w", full, err)
	}
	return e, nil
}

// ReadXattrs returns an entry's extended attributes sorted by name, or none
// where the filesystem has no xattr support.
func ReadXattrs(path string) ([]Xattr, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if errors.Is(err, unix.ERANGE) {
		sz, err2 := unix.Llistxattr(path, nil)
		if err2 != nil {
			return nil, err2
		}
		buf = make([]byte, sz)
		n, err = unix.Llistxattr(path, buf)
	}
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, syscall.ENOSYS) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	var out []Xattr
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		sz, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue
			}
			return nil, fmt.Errorf("read xattr %s: %w", name, err)
		}
		val := make([]byte, sz)
		if sz > 0 {
			if sz, err = unix.Lgetxattr(path, name, val); err != nil {
				return nil, fmt.Errorf("read xattr %s: %w", name, err)
			}
		}
		out = append(out, Xattr{Name: name, Value: val[:sz]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
