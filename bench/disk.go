package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// loopDiskBytes is the sparse size of the bench's disk image: room for the
// apply bench's copies of a Go tree and the deltas bench's repos and laptops.
const loopDiskBytes = 16 << 30

// workFolder makes the folder every comparison works in, and says what it
// is on. Timings of file creation depend on the filesystem's past: ext4
// without a journal (which a temp folder often is) checks every inode freed
// in the last minutes before reusing one, so after a few rm -rf and cp -a
// rounds creating files gets quadratic, and the figure says more about the
// bench's earlier runs than about either tool. A laptop's root is ext4 with
// a journal, so by default the work folder is a fresh ext4 image, mounted
// for the run. Without root (or mkfs.ext4) it falls back to the temp folder,
// and says so.
func workFolder(ctx context.Context, disk string) (dir, where string, done func(), err error) {
	tmp := func(why string) (string, string, func(), error) {
		dir, err := os.MkdirTemp("", "peerup-bench-")
		if err != nil {
			return "", "", nil, err
		}
		fs, _ := exec.Command("stat", "-f", "-c", "%T", dir).Output()
		return dir, fmt.Sprintf("the temp folder (%s)%s", strings.TrimSpace(string(fs)), why),
			func() { os.RemoveAll(dir) }, nil
	}
	switch disk {
	case "temp":
		return tmp("")
	case "loop":
	default:
		return "", "", nil, fmt.Errorf(`-disk %q: want "loop" or "temp"`, disk)
	}
	if os.Geteuid() != 0 {
		return tmp(", not a fresh ext4 image: mounting one needs root")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return tmp(", not a fresh ext4 image: mkfs.ext4 is not installed (apt-get install e2fsprogs)")
	}
	base, err := os.MkdirTemp("", "peerup-bench-disk-")
	if err != nil {
		return "", "", nil, err
	}
	img, mnt := filepath.Join(base, "disk.img"), filepath.Join(base, "mnt")
	cleanup := func() {
		exec.Command("umount", mnt).Run()
		os.RemoveAll(base)
	}
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(loopDiskBytes)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Mkdir(mnt, 0o755)
	}
	// Initialised in full now: left lazy, the kernel zeroes the inode
	// tables in the background for minutes after the mount, under the
	// first timings.
	for _, args := range [][]string{{"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img}, {"mount", "-o", "loop", img, mnt}} {
		if err != nil {
			break
		}
		if out, cerr := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); cerr != nil {
			err = fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), cerr, out)
		}
	}
	if err != nil {
		cleanup()
		return tmp(fmt.Sprintf(", not a fresh ext4 image: %v", err))
	}
	return mnt, "a fresh ext4 image with a journal, as a laptop's root (" + img + ")", cleanup, nil
}
