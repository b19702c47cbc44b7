package fsutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
func FsyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
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
