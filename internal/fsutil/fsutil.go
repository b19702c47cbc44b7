package fsutil

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrBusy is returned when another peerup process holds a repo's lock.
var ErrBusy = errors.New("busy: another peerup process is working on it")

// LockFile takes an exclusive flock on path, failing at once if it is held.
func LockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", filepath.Dir(path), ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// Syncfs flushes the whole filesystem holding path: one call instead of an
// fsync per file, which on flash is the difference between seconds and
// minutes (OSTree PR #49).
func Syncfs(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}

// FsyncDir makes renames and links inside dir durable.
func FsyncDir(dir string) error { return syncOpened(dir, os.Open) }

// syncOpened fsyncs what open returns for name.
func syncOpened(name string, open func(string) (*os.File, error)) error {
	f, err := open(name)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	return nil
}

// WriteAtomic replaces path with data durably: temp file, fsync, rename,
// fsync of the directory. For the few small files outside batches, and an
// export's index and marker.
func WriteAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	return CommitFile(tmp, path)
}

// CommitFile makes the temporary file f, written in full, durably path:
// fsync, close, rename, fsync of path's directory. f must be on path's
// filesystem. On failure f is closed and removed. It is how a file too
// large to hold in memory (a received manifest) replaces another the way
// WriteAtomic does.
func CommitFile(f *os.File, path string) error {
	// A FAT stick cannot represent the mode and refuses the change
	// (EPERM); its files are readable by the mount's own rules.
	err := f.Chmod(0o644)
	if errors.Is(err, unix.EPERM) {
		err = nil
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	return FsyncDir(filepath.Dir(path))
}

// WriteAtomicIn is WriteAtomic for name inside root: every step resolves
// beneath root (os.Root), so a symlink another user planted in a folder we
// write into (a stick) leads nowhere outside it, and the rename replaces a
// planted link at name rather than writing through it.
func WriteAtomicIn(root *os.Root, name string, data []byte) error {
	return CreateAtomicIn(root, name, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// CreateAtomicIn is WriteAtomicIn with the content streamed by fill.
func CreateAtomicIn(root *os.Root, name string, fill func(w io.Writer) error) error {
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp-"+strconv.FormatInt(rand.Int64(), 36))
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		root.Remove(tmp)
		return err
	}
	return FsyncDirIn(root, filepath.Dir(name))
}

// FsyncDirIn is FsyncDir for dir inside root.
func FsyncDirIn(root *os.Root, dir string) error { return syncOpened(dir, root.Open) }

// TrustedOwner reports whether a file owned by uid is one only a user this
// process already trusts could change: root, this process's user, or the
// user who ran sudo (a stick udisks mounted for the logged-in user is
// theirs).
func TrustedOwner(uid uint32) bool {
	if uid == 0 || int(uid) == os.Geteuid() {
		return true
	}
	sudo, err := strconv.Atoi(os.Getenv("SUDO_UID"))
	return err == nil && int(uid) == sudo
}

// CheckPrivatePath refuses, for a process running as root, a folder whose
// path another user could change: dir, or a folder above it, owned by an
// untrusted user or writable by group or others without the sticky bit
// (as /tmp has). Such a user could plant a link there while root writes,
// and send the write anywhere; a path no one else can change needs no
// beneath-only resolution for each of the store's many writes. dir need
// not exist yet: its nearest existing folder and those above are checked.
// Processes not running as root write only as their own user and are not
// checked.
func CheckPrivatePath(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		err := unix.Lstat(p, &st)
		switch {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			return fmt.Errorf("check %s: %w", p, err)
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			// A link's target is checked, from the link's own folder up.
			t, err := filepath.EvalSymlinks(p)
			if err != nil {
				return fmt.Errorf("check %s: %w", p, err)
			}
			if err := CheckPrivatePath(t); err != nil {
				return err
			}
		case !TrustedOwner(st.Uid):
			return fmt.Errorf("%s is owned by uid %d, who could plant links in it while peerup writes there as root", p, st.Uid)
		case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			return fmt.Errorf("%s is writable by group or others (mode %04o), who could plant links in it while peerup writes there as root; chmod go-w %s", p, st.Mode&0o7777, p)
		}
		if p == "/" {
			return nil
		}
	}
}
