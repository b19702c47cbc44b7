package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMarkerParsing feeds console noise through the line splitter: CRLF,
// colour escapes, a kernel message glued before a marker, a line split
// across reads.
func TestMarkerParsing(t *testing.T) {
	v := &VM{changed: make(chan struct{}), exited: make(chan struct{}), started: time.Now()}
	v.feed([]byte("[  OK  ] \x1b[0;32mStarted\x1b[0m foo.\r\n[   3.1] random: crng initVMTEST boot"))
	v.feed([]byte("ed 1 2 3\r\n\x1b]0;title\x07VMTEST mem 1234\r\nVMTEST \r\nplain\n"))
	got := v.Markers()
	if len(got) != 2 || got[0].Key != "booted" || got[0].Rest != "1 2 3" || got[1].Key != "mem" || got[1].Rest != "1234" {
		t.Fatalf("markers = %+v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if rest, err := v.Marker(ctx, "mem"); err != nil || rest != "1234" {
		t.Fatalf("Marker(mem) = %q, %v", rest, err)
	}
	if line, err := v.WaitLine(ctx, func(s string) bool { return strings.HasPrefix(s, "[  OK  ]") }); err != nil || line != "[  OK  ] Started foo." {
		t.Fatalf("WaitLine = %q, %v", line, err)
	}
	close(v.exited)
	if _, err := v.Marker(ctx, "never"); err == nil || !strings.Contains(err.Error(), "plain") {
		t.Fatalf("Marker after exit: %v (want an error with the console tail)", err)
	}
}

// TestBootStock boots the stock guest under QEMU with the laptops' 256 MB:
// base rootfs, test unit, initramfs, Slim, disk image, boot, markers,
// poweroff, then the image checked from the host.
func TestBootStock(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()

	start := time.Now()
	base, err := Base(ctx, BaseOptions{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("base %s in %s", base, time.Since(start).Round(time.Second))

	work := t.TempDir()
	root := filepath.Join(work, "rootfs")
	if err := Copy(ctx, base, root); err != nil {
		t.Fatal(err)
	}
	const script = `vmtest_marker booted "$(cat /proc/cmdline)"
while read -r k v _; do [ "$k" = MemTotal: ] && vmtest_marker memtotal "$v"; done < /proc/meminfo
vmtest_marker failed "$(systemctl list-units --failed --plain --no-legend | cut -d' ' -f1 | tr '\n' ' ')"
eval "$(vmtest_cmd)"
echo done > /var/lib/vmtest-done
sync
systemctl poweroff
`
	if err := InstallTestUnit(root, script); err != nil {
		t.Fatal(err)
	}
	// A test that installs files rebuilds the initramfs this way.
	if _, err := Chroot(ctx, root, "update-initramfs", "-u", "-k", "all"); err != nil {
		t.Fatal(err)
	}
	rep, err := Slim(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rootfs %d MiB, %d MiB after Slim", rep.Before>>20, rep.After>>20)
	kernel, initrd, err := Kernel(root)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(initrd); err == nil {
		t.Logf("initrd %s: %d KiB", filepath.Base(initrd), st.Size()>>10)
	}
	img := filepath.Join(work, "disk.img")
	if err := MakeDisk(ctx, root, img, "1G"); err != nil {
		t.Fatal(err)
	}

	cmd, err := CmdlineArg(`vmtest_marker cmd "from the command line"`)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := Start(ctx, Options{
		Kernel: kernel, Initrd: initrd, Append: "rw " + cmd,
		Disks:   []Disk{{Path: img}},
		LogPath: filepath.Join(work, "console.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	booted, err := vm.Marker(ctx, "booted")
	if err != nil {
		t.Fatal(err)
	}
	ms := vm.Markers()
	t.Logf("first marker after %s under %s: cmdline %q", ms[0].At.Round(100*time.Millisecond), accelName(), booted)
	mem, err := vm.Marker(ctx, "memtotal")
	if err != nil {
		t.Fatal(err)
	}
	kb, err := strconv.Atoi(mem)
	if err != nil || kb <= 0 || kb >= 256*1024 {
		t.Errorf("guest MemTotal = %q kB, want a number below 256 MiB", mem)
	} else {
		t.Logf("guest MemTotal %d kB", kb)
	}
	if failed, err := vm.Marker(ctx, "failed"); err != nil {
		t.Fatal(err)
	} else if failed != "" {
		t.Errorf("failed units in the guest: %s", failed)
	}
	if got, err := vm.Marker(ctx, "cmd"); err != nil || got != "from the command line" {
		t.Errorf("vmtest.cmd marker = %q, %v", got, err)
	}
	if err := vm.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("powered off after %s", time.Since(start).Round(time.Second))
	if !strings.Contains(vm.Log(), "reboot: Power down") {
		t.Errorf("qemu exited but the console shows no power down:\n%s", tail(vm.Log(), 3000))
	}

	if err := Fsck(ctx, img); err != nil {
		t.Error(err)
	}
	if b, err := DebugfsCat(ctx, img, "/var/lib/vmtest-done"); err != nil || string(b) != "done\n" {
		t.Errorf("DebugfsCat = %q, %v", b, err)
	}
	if _, err := DebugfsCat(ctx, img, "/no/such/file"); err == nil {
		t.Error("DebugfsCat of a missing file: no error")
	}
	if dest, err := DebugfsReadlink(ctx, img, "/etc/systemd/system/multi-user.target.wants/vmtest.service"); err != nil || dest != "/etc/systemd/system/vmtest.service" {
		t.Errorf("DebugfsReadlink = %q, %v", dest, err)
	}
}

// TestLockFileExcludes checks the lock Base takes: a second holder in the
// same process waits until the first lets go.
func TestLockFileExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := lockFile(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, path); err == nil {
		t.Fatal("second lockFile succeeded while the first held the lock")
	}
	unlock()
	unlock2, err := lockFile(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}

func accelName() string {
	if a := os.Getenv("PEERUP_VM_ACCEL"); a != "" {
		return a
	}
	return DefaultAccel
}
