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
