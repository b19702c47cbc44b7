package apply

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
)

// Paths of the booted system (SPEC.md §6 and §12).
const (
	// SysrootDir is where the partition's sysroot is found, both on the
	// root partition and in the booted system: the same path everywhere,
	// so units, peerup.toml and the boot step agree.
	SysrootDir = "sysroot"
	// BootedFile records the version the boot step started. It is in the
	// initramfs's /run, which init moves into the booted system, so
	// mark-good knows what actually booted (a one-boot revert boots
	// previous while current stays on probation).
	BootedFile = "/run/peerup/booted"
	// sharedState holds the directories every version shares
	// (SYSROOT/state/var, ...).
	sharedState = "state"
)

// ErrNoSysroot means the partition holds no peerup sysroot: the boot step
// leaves it alone and the machine boots the partition as it is.
var ErrNoSysroot = errors.New("no peerup sysroot on this partition")

// SharedDirs are the directories of the booted system that live outside the
// trees, at SYSROOT/state/<dir>, and are shared by every version: machine
// state and user data must survive an update and a rollback, and must never
// be written into a tree (whose files are the store's inodes).
func SharedDirs() []string { return []string{"var", "home", "root", "srv", "tmp"} }

// MountPoints are the directories the boot step mounts over; a tree gets
// each one its image lacks (stock images have no /sysroot), because the
// booted root is read-only and nothing can be made on it then.
func MountPoints() []string { return append([]string{SysrootDir, "etc"}, SharedDirs()...) }

// addMountPoints gives a tree being built the mount points its image lacks,
// keeping the root's fixed mtime.
func addMountPoints(root string) error {
	made := false
	for _, d := range MountPoints() {
		p := filepath.Join(root, d)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.Mkdir(p, 0o755); err != nil {
			return fmt.Errorf("mount point /%s: %w", d, err)
		}
		if err := blobstore.FixMtime(p); err != nil {
			return err
		}
		made = true
	}
	if made {
		return blobstore.FixMtime(root)
	}
	return nil
}

// BootPartition is the whole boot step, run from the initramfs once it has
// mounted the root partition at rootmnt and before it switches to it:
//
//  1. the partition is moved to part and made writable;
//  2. Boot chooses the tree (probation, fallback, revert);
//  3. the chosen tree becomes the root, read-only, with its own /etc, the
//     shared directories and the sysroot mounted over it (MountTree).
//
// It never leaves the machine without a root: when choosing fails it boots
// current, and when the read-only view cannot be made it binds the tree.
func BootPartition(log *slog.Logger, rootmnt, part, cmdline string) (BootChoice, error) {
	if _, err := os.Stat(filepath.Join(rootmnt, SysrootDir, stateDir)); err != nil {
		return BootChoice{}, ErrNoSysroot
	}
	if err := os.MkdirAll(part, 0o700); err != nil {
		return BootChoice{}, fmt.Errorf("boot: %w", err)
	}
	if err := unix.Mount(rootmnt, part, "", unix.MS_MOVE, ""); err != nil {
		return BootChoice{}, fmt.Errorf("boot: move the partition to %s: %w", part, err)
	}
	// The initramfs mounts the root read-only (the kernel's "ro"); the
	// sysroot's bookkeeping needs it writable.
	if err := unix.Mount("", part, "", unix.MS_REMOUNT, ""); err != nil {
		log.Warn("cannot make the partition writable; booting without bookkeeping", "err", err)
	}
	sysroot := filepath.Join(part, SysrootDir)
	choice, err := chooseTree(sysroot, cmdline)
	if err != nil {
		// Never strand the machine: without a choice, boot current as it is.
		log.Warn("choosing the tree failed; starting current", "err", err)
		choice = BootChoice{Root: filepath.Join(sysroot, LinkCurrent), Reason: "the boot step failed: " + err.Error()}
		if t, err := filepath.EvalSymlinks(choice.Root); err == nil {
			choice.Root = t
			choice.Version, _ = strconv.ParseUint(filepath.Base(t), 10, 64)
		}
		// A switch journal the step could not finish names the version
		// that is current by every other reader's account (Status).
		if s, err := Open(sysroot); err == nil {
			if st, err := s.Status(); err == nil && st.Pending != nil {
				choice.Root, choice.Version = s.TreePath(st.Current), st.Current
			}
		}
	}
	if err := writeBooted(choice.Version); err != nil {
		log.Warn("cannot record the booted version", "err", err)
	}
	if err := MountTree(log, sysroot, choice.Root, rootmnt); err != nil {
		return choice, err
	}
	// The partition's own mount is no longer needed: the binds hold the
	// filesystem, and the partition root is not part of the booted system.
	if err := unix.Unmount(part, unix.MNT_DETACH); err != nil {
		log.Warn("cannot detach the partition mount", "err", err)
	} else {
		os.Remove(part)
	}
	return choice, nil
}

func chooseTree(sysroot, cmdline string) (BootChoice, error) {
	s, err := Open(sysroot)
	if err != nil {
		return BootChoice{}, err
	}
	return s.Boot(cmdline)
}

func writeBooted(v uint64) error {
	if err := os.MkdirAll(filepath.Dir(BootedFile), 0o755); err != nil {
		return err
	}
	return os.WriteFile(BootedFile, []byte(strconv.FormatUint(v, 10)+"\n"), 0o644)
}

// BootedVersion is the version the boot step started, or 0 when this boot
// did not go through it.
func BootedVersion(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v
}

// MountTree makes tree the root at rootmnt:
//
//   - the tree itself as an overlay with no upper layer (its lower layers are
//     the tree and an empty directory under /run/peerup), which the kernel
//     keeps read-only for good: "mount -o remount,rw /" (systemd-remount-fs
//     with a stock fstab) fails instead of opening the store's inodes to
//     writes, as it would on a read-only bind mount;
//   - the tree's own /etc (a copy, never the store's inodes), writable;
//   - SYSROOT/state/<dir> for each shared directory, writable, seeded from
//     the tree with what it lacks;
//   - the sysroot at /sysroot, so the daemon and mark-good find it.
func MountTree(log *slog.Logger, sysroot, tree, rootmnt string) error {
	// overlayfs takes no single lower layer without an upper one: an empty
	// directory below the tree changes nothing that is seen.
	empty := filepath.Join(filepath.Dir(BootedFile), "empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if err := unix.Mount("peerup", rootmnt, "overlay", unix.MS_RDONLY, "lowerdir="+tree+":"+empty); err != nil {
		log.Warn("overlay unavailable; the root is a read-only bind, which a remount can make writable", "err", err)
		if err := unix.Mount(tree, rootmnt, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("boot: mount %s as the root: %w", tree, err)
		}
		if err := unix.Mount("", rootmnt, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			log.Warn("cannot make the root read-only", "err", err)
		}
	}
	bind := func(src, dir string) error {
		dst := filepath.Join(rootmnt, dir)
		if fi, err := os.Stat(dst); err != nil || !fi.IsDir() {
			return fmt.Errorf("boot: the tree has no /%s to mount over", dir)
		}
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("boot: mount %s on /%s: %w", src, dir, err)
		}
		return nil
	}
	if err := bind(filepath.Join(tree, "etc"), "etc"); err != nil {
		return err
	}
	for _, d := range SharedDirs() {
		state := filepath.Join(sysroot, sharedState, d)
		if err := seedShared(filepath.Join(tree, d), state); err != nil {
			log.Warn("seeding a shared directory failed", "dir", "/"+d, "err", err)
		}
		if err := bind(state, d); err != nil {
			return err
		}
	}
	if err := bind(sysroot, SysrootDir); err != nil {
		return err
	}
	// systemd-remount-fs would try to make the overlay writable for a "/"
	// in fstab and fail the unit: the root's options are the boot step's.
	if err := maskForBoot("systemd-remount-fs.service"); err != nil {
		log.Warn("cannot mask systemd-remount-fs for this boot", "err", err)
	}
	return nil
}

// maskForBoot masks a unit for this boot only (systemctl mask --runtime):
// /run/systemd/system is read by the systemd of the booted system, since
// init moves the initramfs's /run into it.
func maskForBoot(unit string) error {
	dir := "/run/systemd/system"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := os.Symlink("/dev/null", filepath.Join(dir, unit))
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// seedShared gives a shared directory what the booted tree has there and
// it lacks, and never changes what it has: /var is the machine's state, kept
// across versions; an image that adds a file under /var gets it on the
// first boot of that image. Each file is complete or absent after a power
// cut (temporary name, fsync, rename), so a cut seed is done again.
func seedShared(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	fi, err := os.Lstat(src)
	if err != nil || !fi.IsDir() {
		// The image has nothing there: an empty directory will do.
		return os.MkdirAll(dst, 0o755)
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		if fi, err := os.Lstat(out); err == nil {
			// The machine's own: kept. A directory is still walked, but
			// never a link or file the machine has where the image has a
			// directory: a user who replaced ~/.config/app with a link to
			// /etc must not have root seed the image's files through it.
			if d.IsDir() && !fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("seed %s: no owner", p)
		}
		if err := seedEntry(p, out, fi, st); err != nil {
			return fmt.Errorf("seed %s: %w", out, err)
		}
		return nil
	})
}

func seedEntry(src, dst string, fi fs.FileInfo, st *syscall.Stat_t) error {
	mode := uint32(st.Mode & 07777)
	switch {
	case fi.IsDir():
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return errors.Join(os.Symlink(t, dst), os.Lchown(dst, int(st.Uid), int(st.Gid)))
	case fi.Mode().IsRegular():
		return seedFile(src, dst, st)
	default:
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return unix.Chmod(dst, mode)
}

func seedFile(src, dst string, st *syscall.Stat_t) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".peerup-seed"
	os.Remove(tmp) // a cut seed's leftover
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chown(int(st.Uid), int(st.Gid))
	}
	if err == nil {
		err = unix.Fchmod(int(out.Fd()), st.Mode&07777)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
