// Package testfs gives tests a real full disk: a small tmpfs of their own,
// and a way to use up its inodes and blocks at the moment a test chooses,
// so that the next write on it fails with the kernel's own ENOSPC.
package testfs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// Tmpfs mounts a tmpfs with mount options opts ("size=16m,nr_inodes=900")
// in a temporary folder and returns it; it is unmounted when the test
// ends. Without root, or where mounting fails, the test skips.
func Tmpfs(t testing.TB, opts string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := filepath.Join(t.TempDir(), "small")
	os.MkdirAll(dir, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Fill uses up every free block and inode of the filesystem dir is on,
// with files in dir; removing dir's contents frees them. dir must exist
// already (making it would take an inode). Fill reports its failures with
// t.Error, so that it may run on any goroutine.
func Fill(t testing.TB, dir string) {
	big, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		t.Errorf("fill %s: %v", dir, err)
		return
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := big.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("fill %s: %v", dir, err)
			}
			break
		}
	}
	big.Close()
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(dir, strconv.Itoa(i)))
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("fill %s: %v", dir, err)
			}
			return
		}
		f.Close()
	}
}
