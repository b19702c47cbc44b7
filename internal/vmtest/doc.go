// Package vmtest boots a real Debian 12 guest under QEMU for tests: the
// kernel, initramfs and systemd the fleet's laptops run, with their 256 MB of
// RAM, on an ext4 image the test builds and inspects from the host.
//
// # Contract
//
// A test calls Available and skips with its error when the rig cannot run
// (it needs root, qemu-system-x86_64, debootstrap, e2fsprogs, unshare). Then:
//
//	base, _ := vmtest.Base(ctx, vmtest.BaseOptions{Logf: t.Logf}) // cached, read-only
//	vmtest.Copy(ctx, base, root)                                 // cp -a
//	vmtest.InstallTestUnit(root, script)                         // + the test's own files
//	vmtest.Chroot(ctx, root, "update-initramfs", "-u", "-k", "all") // if boot files changed
//	vmtest.Slim(ctx, root)                                       // last: drops kernel modules
//	vmtest.MakeDisk(ctx, root, img, "1G")                        // mke2fs -d, no loop device
//	k, i, _ := vmtest.Kernel(root)
//	vm, _ := vmtest.Start(ctx, vmtest.Options{Kernel: k, Initrd: i, Append: "rw", Disks: []vmtest.Disk{{Path: img}}})
//	rest, _ := vm.Marker(ctx, "booted")
//	vm.Wait(ctx) // or vm.Kill() for a power cut
//	vmtest.Fsck(ctx, img); vmtest.DebugfsCat(ctx, img, "/var/lib/...")
//
// Base runs debootstrap --variant=minbase for bookworm with linux-image-amd64,
// initramfs-tools and systemd-sysv (plus BaseOptions.Include) from the host's
// Debian mirror, once: about 2 minutes and 700 MB. Its tree is cached under
// $PEERUP_VMCACHE (default /var/cache/peerup-vmtest) in a folder named by a
// hash of every input, so changing any of them builds a new one. It is built
// aside and renamed into place, so a crash never leaves a half cache, and a
// file lock makes concurrent callers (goroutines or processes) share one
// build. The guest's initramfs holds only virtio_pci, virtio_blk, ext4,
// crc32c_generic and overlay (MODULES=list): Debian's default one is too big
// for 256 MB to unpack. Its root account is locked, no getty runs, its root
// is /dev/vda with no boot-time fsck, and its machine-id is fixed.
//
// Start runs qemu with no network at all (-nic none), no display, and
// -no-reboot, so that a poweroff, a reboot or a kernel panic (panic=5) all
// end qemu. Drives use cache=directsync: a Kill loses what the guest has not
// flushed, as a power cut would. The accelerator is TCG unless
// PEERUP_VM_ACCEL says otherwise (nested KVM hangs on the build machines);
// one boot to the first marker takes 20–40 s there.
//
// The guest talks to the test through its serial console, which the rig
// reads live. A marker is a line "VMTEST <key> <rest>"; the guest writes each
// with one write (vmtest_marker in GuestPreamble), and the rig strips \r and
// terminal escapes and finds "VMTEST " anywhere in a line, since the kernel
// may print just before. A test passes a command to the guest on the kernel
// command line (CmdlineArg, vmtest_cmd) or on a second, read-only disk.
//
// Nothing here is global: each VM, cache and image belongs to its caller.
package vmtest
