package apply_test

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/apply"
)

// TestBootMounts runs the boot step's mounts for real, in a private mount
// namespace (a child of this test binary under unshare -m), on a sysroot
// that ran v1 and applied v2: the root it assembles must be read-only for
// good, /etc and the shared directories writable, and no write of the
// booted system may reach a tree's store inodes.
func TestBootMounts(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: mounts in a private mount namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/var/lib/image-state", "from the image\n", 0o644)
	f.publish(tree, 1)
	write(t, tree+"/usr/bin/tool", "#!/bin/sh\necho tool v2\n", 0o755)
	write(t, tree+"/var/lib/new-in-v2", "new\n", 0o644)
	write(t, tree+"/var/lib/app/conf", "the image's\n", 0o644)
	f.publish(tree, 2)
	// The booted system replaces var/lib/app with a link to here; the
	// next boot's seed must not write through it.
	canary := t.TempDir()
	disk := t.TempDir()
	s, err := apply.Open(filepath.Join(disk, apply.SysrootDir))
	if err != nil {
		t.Fatal(err)
	}
	f.update(s, 1)
	s.MarkGood(0)
	f.update(s, 2)
	// Two boots: the first makes the shared directories, the second must
	// keep what the machine wrote there.
	for round := range 2 {
		cmd := exec.Command("unshare", "-m", "--propagation", "private", os.Args[0], "-test.run=^TestBootMountsChild$", "-test.v")
		cmd.Env = append(os.Environ(), "PEERUP_BOOTMOUNT_DISK="+disk, "PEERUP_BOOTMOUNT_ROUND="+strconv.Itoa(round), "PEERUP_BOOTMOUNT_CANARY="+canary)
		out, err := cmd.CombinedOutput()
		t.Logf("boot %d:\n%s", round+1, out)
		if err != nil {
			t.Fatalf("boot step in a mount namespace: %v", err)
		}
	}
	// After the child's writes: the trees still match their manifests.
	if probs, err := s.Verify(t.Context()); err != nil || len(probs) > 0 {
		t.Fatalf("verify after the booted system wrote: %v %v", probs, err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.Dir(), "state/var/lib/image-state")); string(got) != "the machine's\n" {
		t.Fatalf("seeding overwrote the machine's /var: %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(s.Dir(), "state/var/lib/new-in-v2")); string(got) != "new\n" {
		t.Fatalf("v2's new /var file not seeded: %q", got)
	}
	if ents, _ := os.ReadDir(canary); len(ents) > 0 {
		t.Fatalf("the seed wrote through a link the booted system planted: %s holds %s", canary, ents[0].Name())
	}
	if got, _ := os.ReadFile(filepath.Join(s.Dir(), "state/var/written-by-booted")); string(got) != "x" {
		t.Fatalf("the booted system's /var write is not in SYSROOT/state/var: %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(s.TreePath(2), "etc/written-by-booted")); string(got) != "x" {
		t.Fatalf("the booted system's /etc write is not in v2's own etc: %q", got)
	}
	if _, err := os.Stat(filepath.Join(s.TreePath(1), "etc/written-by-booted")); err == nil {
		t.Fatal("a write to /etc reached the previous tree")
	}
}

// TestBootMountsChild is the half of TestBootMounts that runs in the
// private mount namespace.
func TestBootMountsChild(t *testing.T) {
	disk := os.Getenv("PEERUP_BOOTMOUNT_DISK")
	if disk == "" {
		t.Skip("run by TestBootMounts")
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// The initramfs's /run, and a root partition mounted at rootmnt.
	must(unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"))
	rootmnt := filepath.Join(t.TempDir(), "root")
	must(os.Mkdir(rootmnt, 0o755))
	t.Cleanup(func() { unix.Unmount(rootmnt, unix.MNT_DETACH) }) // before TempDir's removal
	must(unix.Mount(disk, rootmnt, "", unix.MS_BIND, ""))
	must(unix.Mount("", rootmnt, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""))
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, err := apply.BootPartition(log, rootmnt, "/run/peerup/part", "root=/dev/vda ro")
	must(err)
	if c.Version != 2 {
		t.Fatalf("booted v%d, want v2", c.Version)
	}
	if v := apply.BootedVersion(apply.BootedFile); v != 2 {
		t.Fatalf("booted file says %d", v)
	}
	if got, _ := os.ReadFile(rootmnt + "/usr/bin/tool"); !strings.Contains(string(got), "v2") {
		t.Fatalf("root is not v2's tree: %q", got)
	}
	// Read-only for good: a write fails, and so does the remount that
	// systemd-remount-fs does for a stock fstab's "/".
	if err := os.WriteFile(rootmnt+"/usr/bin/tool", []byte("evil"), 0o755); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write to the booted /usr: %v, want EROFS", err)
	}
	if err := unix.Mount("", rootmnt, "", unix.MS_REMOUNT, ""); err == nil {
		t.Fatal("remount,rw of the booted root succeeded")
	}
	if err := os.WriteFile(rootmnt+"/usr/bin/tool", []byte("evil"), 0o755); err == nil {
		t.Fatal("the booted /usr became writable after a remount")
	}
	must(os.WriteFile(rootmnt+"/etc/written-by-booted", []byte("x"), 0o644))
	must(os.WriteFile(rootmnt+"/var/written-by-booted", []byte("x"), 0o644))
	must(os.WriteFile(rootmnt+"/tmp/scratch", []byte("x"), 0o644))
	if os.Getenv("PEERUP_BOOTMOUNT_ROUND") == "0" {
		// The machine's own state, which the next boot's seed must keep.
		must(os.WriteFile(rootmnt+"/var/lib/image-state", []byte("the machine's\n"), 0o644))
		must(os.RemoveAll(rootmnt + "/var/lib/app"))
		must(os.Symlink(os.Getenv("PEERUP_BOOTMOUNT_CANARY"), rootmnt+"/var/lib/app"))
	}
	var st unix.Stat_t
	must(unix.Stat(rootmnt+"/tmp", &st))
	if st.Mode&07777 != 01777 {
		t.Fatalf("shared /tmp has mode %o, want the image's 1777", st.Mode&07777)
	}
	if _, err := os.Stat(rootmnt + "/sysroot/peerup/repo"); err != nil {
		t.Fatalf("the sysroot is not at /sysroot: %v", err)
	}
	if _, err := os.Lstat("/run/systemd/system/systemd-remount-fs.service"); err != nil {
		t.Fatalf("systemd-remount-fs not masked for the boot: %v", err)
	}
}
