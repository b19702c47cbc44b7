package vmtest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// configVersion names the revision of configScript and of the files Base
// writes. Bump it whenever either changes, so that caches built by an older
// rig are not reused.
const configVersion = "4"

// DefaultCacheDir holds built rootfs trees unless PEERUP_VMCACHE says
// otherwise.
const DefaultCacheDir = "/var/cache/peerup-vmtest"

// basePackages are always installed: a kernel, the tools to rebuild its
// initramfs, and systemd as init.
var basePackages = []string{"linux-image-amd64", "initramfs-tools", "systemd-sysv"}

// initramfsModules are the only modules the guest's initramfs carries: with
// MODULES=most (Debian's default) it is 48 MB compressed and a 256 MB guest
// panics unpacking it. These are what a virtio root disk needs, plus overlay
// for tests that stack an overlay root.
var initramfsModules = []string{"virtio_pci", "virtio_blk", "ext4", "crc32c_generic", "overlay"}

// configScript runs inside the fresh debootstrap tree (in Chroot) to make it
// a bootable test guest. Kept small: every line costs a cache rebuild.
const configScript = `set -eu
sed -i 's/^MODULES=.*/MODULES=list/' /etc/initramfs-tools/initramfs.conf
grep -q '^MODULES=list$' /etc/initramfs-tools/initramfs.conf
echo vmtest > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n' > /etc/hosts
# No fsck pass at boot: the host runs e2fsck on the image itself (Fsck), and
# a boot-time repair would hide what a power cut left behind.
echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' > /etc/fstab
# The root account stays locked (debootstrap's default); nothing logs in.
passwd -l root >/dev/null
# A fixed machine-id: an empty one makes systemd treat every boot as a first
# boot (presets, firstboot), which is slower and differs between boots.
echo 2f1e0c6a9b5d4e3f8a7b6c5d4e3f2a1b > /etc/machine-id
# No login prompts: a getty on ttyS0 would write into the serial log the
# tests parse, and there is no screen for tty1.
ln -sf /dev/null /etc/systemd/system/serial-getty@ttyS0.service
ln -sf /dev/null /etc/systemd/system/getty@tty1.service
ln -sf /dev/null /etc/systemd/system/getty-static.service
# apt's timers would try the network, which a guest never has, and fail.
ln -sf /dev/null /etc/systemd/system/apt-daily.timer
ln -sf /dev/null /etc/systemd/system/apt-daily-upgrade.timer
systemctl set-default multi-user.target >/dev/null 2>&1
apt-get clean
update-initramfs -u -k all
`

// BaseOptions says which rootfs Base builds. The zero value is a stock guest.
type BaseOptions struct {
	// Suite is the Debian release; default "bookworm".
	Suite string
	// Mirror is the Debian mirror; default the first URIs: line of
	// /etc/apt/sources.list.d/debian.sources.
	Mirror string
	// Include lists packages installed besides the kernel, initramfs-tools
	// and systemd-sysv.
	Include []string
	// CacheDir holds built trees; default $PEERUP_VMCACHE, else
	// DefaultCacheDir.
	CacheDir string
	// Logf receives progress lines (t.Logf fits); nil discards them.
	Logf func(format string, args ...any)
}

// Base returns a cached Debian rootfs directory built by debootstrap, or
// builds it. The directory is shared by every test: treat it as read-only and
// Copy it before changing anything. The cache is keyed by a hash of all the
// inputs; a tree is built beside it and renamed into place only when
// complete, and builders of one tree (in this process or another, such as
// the parallel package binaries of go test ./...) take a file lock so that
// only one of them builds and the others reuse its result.
func Base(ctx context.Context, opt BaseOptions) (string, error) {
	logf := opt.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	suite := opt.Suite
	if suite == "" {
		suite = "bookworm"
	}
	mirror := opt.Mirror
	if mirror == "" {
		m, err := defaultMirror("/etc/apt/sources.list.d/debian.sources")
		if err != nil {
			return "", fmt.Errorf("vmtest: base: %w", err)
		}
		mirror = m
	}
	cache := opt.CacheDir
	if cache == "" {
		cache = os.Getenv("PEERUP_VMCACHE")
	}
	if cache == "" {
		cache = DefaultCacheDir
	}
	pkgs := append(slices.Clone(basePackages), opt.Include...)
	sort.Strings(pkgs)
	pkgs = slices.Compact(pkgs)

	inputs := strings.Join([]string{
		"suite=" + suite, "mirror=" + mirror, "packages=" + strings.Join(pkgs, ","),
		"modules=" + strings.Join(initramfsModules, ","), "config=" + configVersion, configScript,
	}, "\n")
	sum := sha256.Sum256([]byte(inputs))
	key := suite + "-" + hex.EncodeToString(sum[:8])
	final := filepath.Join(cache, key)
	rootfs := filepath.Join(final, "rootfs")

	if _, err := os.Stat(rootfs); err == nil {
		return rootfs, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(cache, key+".lock"))
	if err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	defer unlock()
	// Another builder may have finished while we waited for the lock.
	if _, err := os.Stat(rootfs); err == nil {
		return rootfs, nil
	}
	// Leftovers of builds that crashed: only ours (same key), as we hold its
	// lock; builds of other keys may be running.
	if old, _ := filepath.Glob(filepath.Join(cache, ".build-"+key+"-*")); len(old) > 0 {
		for _, o := range old {
			logf("vmtest: removing unfinished build %s", o)
			if err := os.RemoveAll(o); err != nil {
				return "", fmt.Errorf("vmtest: base: removing stale build: %w", err)
			}
		}
	}
	tmp, err := os.MkdirTemp(cache, ".build-"+key+"-")
	if err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.WriteFile(filepath.Join(tmp, "inputs.txt"), []byte(inputs), 0o644); err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	dir := filepath.Join(tmp, "rootfs")
	start := time.Now()
	logf("vmtest: debootstrap %s from %s into %s (a few minutes, once)", suite, mirror, dir)
	if err := debootstrap(ctx, logf, filepath.Join(tmp, "debootstrap.log"),
		"--variant=minbase", "--include="+strings.Join(pkgs, ","), suite, dir, mirror); err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	logf("vmtest: debootstrap done in %s", time.Since(start).Round(time.Second))
	if err := os.WriteFile(filepath.Join(dir, "etc/initramfs-tools/modules"),
		[]byte("# peerup vmtest: what a virtio root needs\n"+strings.Join(initramfsModules, "\n")+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	if _, err := Chroot(ctx, dir, "sh", "-c", configScript); err != nil {
		return "", fmt.Errorf("vmtest: base: configuring: %w", err)
	}
	if _, _, err := Kernel(dir); err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	// MkdirTemp made it 0700; the cache is for every user of the machine.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("vmtest: base: %w", err)
	}
	ok = true
	logf("vmtest: base ready at %s after %s", rootfs, time.Since(start).Round(time.Second))
	return rootfs, nil
}

// debootstrap runs debootstrap, keeps its whole output in logPath and passes
// its stage lines (not the one-per-package ones) to logf.
func debootstrap(ctx context.Context, logf func(string, ...any), logPath string, args ...string) error {
	path, err := lookTool("debootstrap")
	if err != nil {
		return err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := execCommand(ctx, path, args...)
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	var lines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			lines = append(lines, line)
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "I:" {
				switch f[1] {
				case "Retrieving", "Validating", "Extracting", "Unpacking", "Configuring":
					if f[2] != "the" {
						continue
					}
				}
				logf("vmtest: debootstrap: %s", line)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err = cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		return &CmdError{Args: append([]string{"debootstrap"}, args...), Err: err, Output: strings.Join(lines, "\n")}
	}
	return nil
}

// defaultMirror is the first URIs: of a deb822 sources file.
func defaultMirror(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("finding the Debian mirror: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "URIs:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return f[0], nil
			}
		}
	}
	return "", fmt.Errorf("finding the Debian mirror: no URIs: line in %s", path)
}

// lockFile takes an exclusive flock on path, polling so that ctx can end the
// wait. flock locks belong to the open file, so two callers in one process
// exclude each other as two processes do.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Copy copies the rootfs tree src to dst (which must not exist), keeping hard
// links, owners, modes, device nodes and xattrs: cp -a.
func Copy(ctx context.Context, src, dst string) error {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("vmtest: copy: %s already exists", dst)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("vmtest: copy: %w", err)
	}
	if _, err := run(ctx, "cp", "-a", "--", src, dst); err != nil {
		return fmt.Errorf("vmtest: copy: %w", err)
	}
	return nil
}

// Chroot runs argv inside the rootfs dir, in a private mount namespace
// (unshare -m) with /proc, /sys and the host's /dev mounted, so that tools
// such as update-initramfs work; the mounts vanish with the namespace, even
// if the command is killed. It returns the command's stdout; on failure the
// error holds its output.
func Chroot(ctx context.Context, dir string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("vmtest: chroot: no command")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("vmtest: chroot: %w", err)
	}
	const setup = `set -e; d=$1; shift
mount -t proc proc "$d/proc"
mount -t sysfs sys "$d/sys"
mount --rbind /dev "$d/dev"
exec chroot "$d" "$@"`
	args := append([]string{"--mount", "--propagation", "private", "sh", "-c", setup, "sh", abs}, argv...)
	out, err := run(ctx, "unshare", args...)
	if err != nil {
		return out, fmt.Errorf("vmtest: chroot %s: %w", abs, err)
	}
	return out, nil
}

// SlimReport is the apparent size of a tree before and after Slim, counting
// each hard-linked file once.
type SlimReport struct {
	Before, After int64
}

// Slim removes from a rootfs what a test guest does not need, so that images
// are small and quick to build and publish: documentation, man and info
// pages, translations, apt's caches and lists, and the kernel's modules. The
// modules go because the initramfs already holds the few the guest loads;
// module metadata is rebuilt (depmod) so that udev and systemd-modules-load
// find an empty set rather than a broken one. Run it after the last
// update-initramfs: one run later would build an initramfs with no modules.
func Slim(ctx context.Context, dir string) (SlimReport, error) {
	var rep SlimReport
	var err error
	if rep.Before, err = treeSize(dir); err != nil {
		return rep, fmt.Errorf("vmtest: slim: %w", err)
	}
	var remove []string
	for _, pat := range []string{
		"usr/share/doc/*", "usr/share/man/*", "usr/share/info/*",
		"var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*",
		"usr/share/locale/*/", // directories only: locale.alias stays
		"usr/lib/modules/*/kernel", "usr/lib/modules/*/updates",
	} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return rep, fmt.Errorf("vmtest: slim: %w", err)
		}
		remove = append(remove, m...)
	}
	for _, p := range remove {
		if filepath.Base(p) == "lock" || filepath.Base(p) == "partial" {
			continue // apt's lists/lock and lists/partial are expected to exist
		}
		if err := os.RemoveAll(filepath.Clean(p)); err != nil {
			return rep, fmt.Errorf("vmtest: slim: %w", err)
		}
	}
	kvers, _ := filepath.Glob(filepath.Join(dir, "usr/lib/modules/*"))
	for _, kv := range kvers {
		if _, err := Chroot(ctx, dir, "depmod", "-a", filepath.Base(kv)); err != nil {
			return rep, fmt.Errorf("vmtest: slim: %w", err)
		}
	}
	if rep.After, err = treeSize(dir); err != nil {
		return rep, fmt.Errorf("vmtest: slim: %w", err)
	}
	return rep, nil
}

// treeSize is the sum of the sizes of the files under dir, hard links once.
func treeSize(dir string) (int64, error) {
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		total += info.Size()
		return nil
	})
	return total, err
}

// Kernel returns the kernel and initramfs of a rootfs: boot/vmlinuz-V and
// boot/initrd.img-V for the highest V that has both.
func Kernel(dir string) (kernel, initrd string, err error) {
	ks, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	sort.Strings(ks)
	for i := len(ks) - 1; i >= 0; i-- {
		ver := strings.TrimPrefix(filepath.Base(ks[i]), "vmlinuz-")
		ird := filepath.Join(dir, "boot", "initrd.img-"+ver)
		if _, err := os.Stat(ird); err == nil {
			return ks[i], ird, nil
		}
	}
	return "", "", fmt.Errorf("vmtest: no boot/vmlinuz-* with its initrd.img-* in %s", dir)
}
