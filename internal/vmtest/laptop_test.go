package vmtest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerup/peerup/internal/vmtest"
)

// The laptop tests boot peerup's own boot pieces (daemon/dist) in a 256 MB
// Debian guest, installed as README "Installing the boot pieces" says, and
// drive it from its serial console. PEERUP_VM_LONG=1 (make test-vm) runs
// the long set: 100 power cuts (two chains of 50, side by side, one vCPU
// each) and the default number of boot tries.

// guestScript runs at every boot of the laptop (vmtest.service, after
// peerup-mark-good.service): it reports how the boot went, mounts the
// stick (the second disk, a repo), runs the step the test passed on the
// kernel command line, and powers off.
const guestScript = `
m() { vmtest_marker "$@"; }
flat() { tr '\n' ' ' | tail -c 600; }
show() { systemctl show -p "$2" --value "$1"; }
m booted "$(cat /run/peerup/booted 2>/dev/null)"
m root "$(findmnt -no FSTYPE,OPTIONS /)"
m markgood "load=$(show peerup-mark-good.service LoadState) result=$(show peerup-mark-good.service Result) started=$(show peerup-mark-good.service ExecMainStartTimestampMonotonic) status=$(show peerup-mark-good.service ExecMainStatus)"
m remountfs "$(show systemd-remount-fs.service LoadState) $(show systemd-remount-fs.service ActiveState)"
m failed "$(systemctl list-units --state=failed --no-legend --plain | awk '{print $1}' | flat)"
mkdir -p /run/stick && mount -o ro /dev/vdb /run/stick
P="--sysroot /sysroot"
T="--trust /etc/peerup/fleet.pub --from /run/stick/repo"
# run NAME CMD...: runs a peerup command in a cgroup of its own and reports
# its exit status, peak memory and last words.
run() {
	name=$1; shift
	cg=/sys/fs/cgroup/vmtest-$name-$$
	# A child cgroup has memory.peak only if the root hands it the memory
	# controller, which systemd may not have done yet this early.
	grep -qw memory /sys/fs/cgroup/cgroup.subtree_control || echo +memory > /sys/fs/cgroup/cgroup.subtree_control
	mkdir -p $cg
	out=$(sh -c 'echo $$ > '$cg'/cgroup.procs; exec "$@"' sh "$@" 2>&1); rc=$?
	m "$name" "rc=$rc peak=$(cat $cg/memory.peak 2>/dev/null) out=$(echo "$out" | flat)"
}
verify() { run verify peerup verify $P; }
status() { m status "$(peerup status $P --json | flat)"; }
eval "$(vmtest_cmd)"
m end
systemctl poweroff
`

// lab is the host side: the published versions, the laptop's kernel and
// initramfs, its first disk and the stick.
type lab struct {
	dir, repo, pub string
	kernel, initrd string
	disk, stick    string
	cutVersions    []uint64 // versions for each power-cut chain
	chains         int      // power-cut chains run side by side
	cpus           int      // vCPUs per guest; 0 is vmtest's default
}

func long() bool { return os.Getenv("PEERUP_VM_LONG") != "" }

// peakMiB reads the "peak=BYTES" a guest's run marker carries: the
// memory.peak of the command's own cgroup, page cache included. A marker
// without one fails the test: a figure of 0 would read as a pass.
func peakMiB(t *testing.T, rest string) float64 {
	t.Helper()
	for _, f := range strings.Fields(rest) {
		if v, ok := strings.CutPrefix(f, "peak="); ok {
			if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
				return n / (1 << 20)
			}
		}
	}
	t.Errorf("the guest reported no memory peak (memory.peak of the command's cgroup): %s", rest)
	return 0
}

func run(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func install(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		t.Fatal(err)
	}
}

// payload is version k's changing file: real Debian libraries of the guest,
// concatenated from a rotating start, so an update carries real patches.
func payload(t *testing.T, root string, k int) []byte {
	t.Helper()
	libs, _ := filepath.Glob(filepath.Join(root, "usr/lib/x86_64-linux-gnu/*.so.*"))
	slices.Sort(libs)
	var files [][]byte
	for _, l := range libs {
		if fi, err := os.Lstat(l); err == nil && fi.Mode().IsRegular() {
			b, _ := os.ReadFile(l)
			files = append(files, b)
		}
	}
	var out []byte
	for i := 0; len(out) < 3<<20 && i < len(files); i++ {
		out = append(out, files[(i+k)%len(files)]...)
	}
	return out
}

func newLab(t *testing.T, ctx context.Context) *lab {
	t.Helper()
	if err := vmtest.Available(); err != nil {
		t.Skip(err)
	}
	base, err := vmtest.Base(ctx, vmtest.BaseOptions{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{dir: t.TempDir()}
	bin := filepath.Join(l.dir, "bin")
	peerup := filepath.Join(bin, "peerup")
	run(t, ctx, "go", "build", "-o", peerup, "github.com/peerup/peerup/cmd/peerup")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(bin, "peerup-boot"), "github.com/peerup/peerup/cmd/peerup-boot")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build peerup-boot: %v\n%s", err, out)
	}
	run(t, ctx, peerup, "keygen", "--name", "fleet", "--out", filepath.Join(l.dir, "keys"))
	key, pub := filepath.Join(l.dir, "keys/fleet.key"), filepath.Join(l.dir, "keys/fleet.pub")
	l.pub = pub

	root := filepath.Join(l.dir, "rootfs")
	if err := vmtest.Copy(ctx, base, root); err != nil {
		t.Fatal(err)
	}
	_, stockInitrd, err := vmtest.Kernel(root)
	if err != nil {
		t.Fatal(err)
	}
	stock, _ := os.Stat(stockInitrd)
	// README "Installing the boot pieces", into the image the school
	// publishes. The rig's initramfs.conf already says MODULES=list (the
	// laptop's MODULES=dep would pick the host's modules here).
	dist := "../../daemon/dist"
	install(t, peerup, root+"/usr/bin/peerup", 0o755)
	install(t, filepath.Join(bin, "peerup-boot"), root+"/usr/bin/peerup-boot", 0o755)
	install(t, dist+"/initramfs-tools/hooks/peerup", root+"/etc/initramfs-tools/hooks/peerup", 0o755)
	install(t, dist+"/initramfs-tools/scripts/local-bottom/peerup", root+"/etc/initramfs-tools/scripts/local-bottom/peerup", 0o755)
	install(t, dist+"/peerup-mark-good.service", root+"/etc/systemd/system/peerup-mark-good.service", 0o644)
	install(t, pub, root+"/etc/peerup/fleet.pub", 0o644)
	install(t, dist+"/peerup.toml", root+"/etc/peerup/peerup.toml", 0o644)
	wants := root + "/etc/systemd/system/multi-user.target.wants"
	os.MkdirAll(wants, 0o755)
	if err := os.Symlink("/etc/systemd/system/peerup-mark-good.service", wants+"/peerup-mark-good.service"); err != nil {
		t.Fatal(err)
	}
	if out, err := vmtest.Chroot(ctx, root, "update-initramfs", "-u", "-k", "all"); err != nil {
		t.Fatalf("update-initramfs: %v\n%s", err, out)
	}
	if out, err := vmtest.Chroot(ctx, root, "sh", "-c", "lsinitramfs /boot/initrd.img-* | grep -c -e usr/bin/peerup-boot -e overlay.ko"); err != nil || strings.TrimSpace(string(out)) != "2" {
		t.Fatalf("initramfs lacks peerup-boot or overlay: %v %s", err, out)
	}
	if err := vmtest.InstallTestUnit(root, guestScript); err != nil {
		t.Fatal(err)
	}
	write(t, root+"/etc/systemd/system/vmtest.service.d/after-mark-good.conf", "[Unit]\nAfter=peerup-mark-good.service multi-user.target\n")
	if _, err := vmtest.Slim(ctx, root); err != nil {
		t.Fatal(err)
	}
	kernel, initrd, err := vmtest.Kernel(root)
	if err != nil {
		t.Fatal(err)
	}
	l.kernel, l.initrd = filepath.Join(l.dir, "vmlinuz"), filepath.Join(l.dir, "initrd.img")
	install(t, kernel, l.kernel, 0o644)
	install(t, initrd, l.initrd, 0o644)
	ours, _ := os.Stat(l.initrd)
	t.Logf("initramfs: %d KiB, of which the boot pieces add %d KiB", ours.Size()>>10, (ours.Size()-stock.Size())>>10)

	// The versions: 1 as installed; 2 changes an /etc file the laptop
	// keeps, one it edits too, and /usr; 3 never reaches mark-good; 4... for
	// the power cuts, each with a changed library bundle.
	l.repo = filepath.Join(l.dir, "stick/repo")
	publish := func(v int) {
		write(t, root+"/usr/share/vmtest/version", strconv.Itoa(v)+"\n")
		run(t, ctx, peerup, "publish", "--repo", l.repo, "--image", "laptop", "--key", key, "--label", "v"+strconv.Itoa(v), root)
	}
	write(t, root+"/etc/vmtest/image.conf", "setting=1\n")
	write(t, root+"/etc/vmtest/both.conf", "owner=image-1\n")
	write(t, root+"/etc/vmtest/local.conf", "edit=none\n")
	publish(1)
	write(t, root+"/etc/vmtest/image.conf", "setting=2\n")
	write(t, root+"/etc/vmtest/both.conf", "owner=image-2\n")
	publish(2)
	markGood := root + "/etc/systemd/system/peerup-mark-good.service"
	unit, _ := os.ReadFile(markGood)
	os.Remove(markGood)
	if err := os.Symlink("/dev/null", markGood); err != nil {
		t.Fatal(err)
	}
	publish(3)
	os.Remove(markGood)
	write(t, markGood, string(unit))
	// The long set's 100 cuts are two chains over the same 50 versions, on
	// two copies of the disk: a cut needs a boot, and a boot under TCG is
	// most of a round, so two one-vCPU guests side by side halve the time.
	rounds := 10
	l.chains = 1
	if long() {
		rounds, l.chains, l.cpus = 50, 2, 1
	}
	for v := 4; v < 4+rounds; v++ {
		write(t, root+"/usr/lib/vmtest/payload", string(payload(t, root, v)))
		publish(v)
		l.cutVersions = append(l.cutVersions, uint64(v))
	}

	// The first version, installed onto the laptop's partition by the
	// image builder: the README's "peerup update" line, run on the host.
	part := filepath.Join(l.dir, "part")
	run(t, ctx, peerup, "update", "--sysroot", part+"/sysroot", "--trust", pub, "--from", l.repo, "--version", "1")
	l.disk = filepath.Join(l.dir, "laptop.img")
	if err := vmtest.MakeDisk(ctx, part, l.disk, "1536M"); err != nil {
		t.Fatal(err)
	}
	l.stick = filepath.Join(l.dir, "stick.img")
	if err := vmtest.MakeDisk(ctx, filepath.Join(l.dir, "stick"), l.stick, "1024M"); err != nil {
		t.Fatal(err)
	}
	return l
}

// boot is one boot of the laptop: it runs step (shell, in the guest script's
// context) and returns the markers once the guest powered off.
type boot struct {
	vm      *vmtest.VM
	markers map[string]string
}

func (l *lab) start(t *testing.T, ctx context.Context, disk, step, extra string) *vmtest.VM {
	t.Helper()
	arg, err := vmtest.CmdlineArg(step)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := vmtest.Start(ctx, vmtest.Options{
		Kernel: l.kernel, Initrd: l.initrd,
		Append: "ro " + arg + " " + extra,
		Disks:  []vmtest.Disk{{Path: disk}, {Path: l.stick, ReadOnly: true}},
		CPUs:   l.cpus,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Kill() })
	return vm
}

func (l *lab) boot(t *testing.T, ctx context.Context, disk, step, extra string) boot {
	t.Helper()
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	vm := l.start(t, bctx, disk, step, extra)
	if err := vm.Wait(bctx); err != nil {
		t.Fatalf("guest did not power off: %v\n%s", err, tailLog(vm))
	}
	b := boot{vm: vm, markers: map[string]string{}}
	for _, m := range vm.Markers() {
		b.markers[m.Key] = m.Rest
	}
	if _, ok := b.markers["end"]; !ok {
		t.Fatalf("the guest script did not finish\n%s", tailLog(vm))
	}
	t.Logf("boot: %v", b.markers)
	return b
}

func tailLog(vm *vmtest.VM) string {
	s := vm.Log()
	if len(s) > 6000 {
		s = s[len(s)-6000:]
	}
	return s
}

func (b boot) want(t *testing.T, key, contains string) {
	t.Helper()
	if !strings.Contains(b.markers[key], contains) {
		t.Fatalf("%s: %q, want it to contain %q\n%s", key, b.markers[key], contains, tailLog(b.vm))
	}
}

// bootState reads SYSROOT/peerup/boot.json off the powered-off disk.
type bootState struct {
	Trying uint64   `json:"trying"`
	Left   int      `json:"left"`
	Bad    []uint64 `json:"bad"`
}

func readBoot(t *testing.T, ctx context.Context, disk string) (bootState, string) {
	t.Helper()
	var b bootState
	data, err := vmtest.DebugfsCat(ctx, disk, "/sysroot/peerup/boot.json")
	if err == nil && len(data) > 0 {
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatalf("boot.json: %v: %q", err, data)
		}
	}
	cur, err := vmtest.DebugfsReadlink(ctx, disk, "/sysroot/current")
	if err != nil {
		t.Fatal(err)
	}
	return b, cur
}

func TestLaptop(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, ctx)
	disk := filepath.Join(l.dir, "a.img")
	run(t, ctx, "cp", "--sparse=always", l.disk, disk)
	tries := 1
	if long() {
		tries = 3
	}

	t.Run("boots current through the initramfs and marks it good", func(t *testing.T) {
		// Installed by the image builder, v1 starts on probation.
		if st, cur := readBoot(t, ctx, disk); cur != "trees/1" || st.Trying != 1 {
			t.Fatalf("as installed: current %s, boot state %+v", cur, st)
		}
		b := l.boot(t, ctx, disk, `
echo laptop-7 > /etc/hostname
useradd -m pupil
sed -i s/edit=none/edit=local/ /etc/vmtest/local.conf
sed -i s/owner=image-1/owner=local/ /etc/vmtest/both.conf
m links "$(stat -c %h /etc/hostname /etc/vmtest/local.conf /usr/bin/peerup | flat)"
m usrwrite "$(touch /usr/bin/x 2>&1 | flat)"
m remount "$(mount -o remount,rw / 2>&1 | flat) $(touch /usr/share/vmtest/x 2>&1 | flat)"
verify
`, "")
		b.want(t, "booted", "1")
		b.want(t, "root", "overlay ro")
		b.want(t, "markgood", "result=success")
		b.want(t, "markgood", "status=0")
		if b.markers["failed"] != "" {
			t.Fatalf("failed units on a peerup boot: %s", b.markers["failed"])
		}
		// /etc files are the tree's own inodes; /usr is the store's.
		if f := strings.Fields(b.markers["links"]); len(f) != 3 || f[0] != "1" || f[1] != "1" || f[2] == "1" {
			t.Fatalf("link counts of /etc/hostname, /etc/vmtest/local.conf, /usr/bin/peerup: %v", f)
		}
		b.want(t, "usrwrite", "Read-only file system")
		b.want(t, "remount", "Read-only file system")
		b.want(t, "verify", "rc=0")
		// mark-good ended the probation, as boot.json on the disk says.
		if st, _ := readBoot(t, ctx, disk); st.Trying != 0 || len(st.Bad) != 0 {
			t.Fatalf("after the first boot: boot state %+v", st)
		}
	})

	t.Run("updates itself from the stick, inside the guest", func(t *testing.T) {
		b := l.boot(t, ctx, disk, "run update peerup update $P $T --version 2", "")
		b.want(t, "booted", "1")
		b.want(t, "update", "rc=0")
		t.Logf("in-guest update 1→2 (small) in a 256 MB guest: peak %.1f MiB (memory.peak of its cgroup)", peakMiB(t, b.markers["update"]))
		st, cur := readBoot(t, ctx, disk)
		if cur != "trees/2" || st.Trying != 2 {
			t.Fatalf("after the update: current %s, boot state %+v", cur, st)
		}
	})

	t.Run("peerup.revert=1 boots previous for one boot", func(t *testing.T) {
		b := l.boot(t, ctx, disk, "", "peerup.revert=1")
		b.want(t, "booted", "1")
		// mark-good ran, and left v2 on probation: v1 booted, not v2.
		b.want(t, "markgood", "status=0")
		st, cur := readBoot(t, ctx, disk)
		if cur != "trees/2" || st.Trying != 2 {
			t.Fatalf("after a one-boot revert: current %s, boot state %+v", cur, st)
		}
	})

	t.Run("reboots into the update with the laptop's /etc edits", func(t *testing.T) {
		b := l.boot(t, ctx, disk, fmt.Sprintf(`
m etc "host=$(cat /etc/hostname) user=$(grep -c ^pupil: /etc/passwd) home=$(test -d /home/pupil && echo yes) $(cat /etc/vmtest/image.conf /etc/vmtest/both.conf /etc/vmtest/local.conf | flat)"
m version "$(cat /usr/share/vmtest/version)"
echo laptop-8 > /etc/hostname
m prev "$(cat /sysroot/previous/etc/hostname)"
verify
run update peerup update $P $T --version 3 --boot-tries %d
`, tries), "")
		b.want(t, "booted", "2")
		b.want(t, "version", "2")
		b.want(t, "markgood", "result=success")
		b.want(t, "etc", "host=laptop-7 user=1 home=yes setting=2 owner=local edit=local")
		// A write to /etc of the running v2 changed nothing in v1's tree,
		// and verify (of v2 and v1 against their manifests) is clean.
		b.want(t, "prev", "laptop-7")
		b.want(t, "verify", "rc=0")
		b.want(t, "update", "rc=0")
		st, cur := readBoot(t, ctx, disk)
		if cur != "trees/3" || st.Trying != 3 || st.Left != tries {
			t.Fatalf("after the update to 3: current %s, boot state %+v", cur, st)
		}
	})

	t.Run("a version that never reaches mark-good falls back by itself", func(t *testing.T) {
		for i := range tries {
			b := l.boot(t, ctx, disk, "", "")
			b.want(t, "booted", "3")
			b.want(t, "markgood", "load=masked")
			t.Logf("probation boot %d of v3", i+1)
		}
		b := l.boot(t, ctx, disk, `m etc "host=$(cat /etc/hostname)"`, "")
		b.want(t, "booted", "2")
		b.want(t, "etc", "host=laptop-8")
		st, cur := readBoot(t, ctx, disk)
		if cur != "trees/2" || !slices.Contains(st.Bad, 3) || st.Trying != 0 {
			t.Fatalf("after the fallback: current %s, boot state %+v", cur, st)
		}
	})

	t.Run("peerup.revert=1 never boots the version marked bad", func(t *testing.T) {
		b := l.boot(t, ctx, disk, "", "peerup.revert=1")
		b.want(t, "booted", "2")
		if !strings.Contains(b.vm.Log(), "marked bad") {
			t.Fatalf("the boot step did not say why it kept current:\n%s", tailLog(b.vm))
		}
	})
	t.Run("power cuts", func(t *testing.T) { powerCuts(t, l) })
}

// powerCuts kills qemu at random moments of in-guest updates, applies and
// gcs; after each, the disk must fsck clean, the next boot come up on a
// whole version with verify clean, and the interrupted update complete.
// It runs l.chains chains side by side, each on its own copy of the disk.
func powerCuts(t *testing.T, l *lab) {
	var (
		mu                 sync.Mutex
		cuts, during, want int
		maxPeak            float64
	)
	t.Run("chains", func(t *testing.T) {
		for c := range l.chains {
			want += len(l.cutVersions)
			t.Run(fmt.Sprintf("chain %d", c+1), func(t *testing.T) {
				if l.chains > 1 {
					t.Parallel()
				}
				r := powerCutChain(t, l, filepath.Join(l.dir, fmt.Sprintf("cuts-%d.img", c+1)), uint64(c))
				mu.Lock()
				defer mu.Unlock()
				cuts, during, maxPeak = cuts+r.cuts, during+r.during, max(maxPeak, r.maxPeak)
			})
		}
	})
	t.Logf("power cuts: %d in %d chains (%d before the operation ended), over update, apply and gc; each next boot came up on a whole version, verify and fsck clean, the interrupted update completed", cuts, l.chains, during)
	t.Logf("in-guest update of a 3 MiB library bundle (patches) in a 256 MB guest: peak %.1f MiB (memory.peak of its cgroup, page cache included)", maxPeak)
	if cuts < want {
		t.Fatalf("only %d power cuts of %d", cuts, want)
	}
}

type chainResult struct {
	cuts, during int
	maxPeak      float64
}

// powerCutChain is one chain of rounds on its own disk.
func powerCutChain(t *testing.T, l *lab, disk string, seq uint64) chainResult {
	ctx := t.Context()
	run(t, ctx, "cp", "--sparse=always", l.disk, disk)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), seq))

	// Each round: boot, check the state the last cut left, complete the
	// interrupted operation, then start the next one and cut the power at
	// a random moment of it. How long an operation takes is learnt from the
	// completions, which run whole (an apply alone is a few renames).
	ops := []string{"update", "apply", "gc"}
	took := map[string]time.Duration{"update": 30 * time.Second, "apply": 2 * time.Second, "gc": 10 * time.Second}
	prev, current := uint64(1), uint64(1)
	cuts, during := 0, 0
	maxPeak := 0.0
	var measured time.Duration // the longest update completion so far
	complete := ""
	for i, v := range l.cutVersions {
		op := ops[i%len(ops)]
		var step string
		switch op {
		case "update":
			step = fmt.Sprintf("m op-start update; run update peerup update $P $T --version %d", v)
		case "apply":
			step = fmt.Sprintf("run pull peerup pull $P $T --version %d; m op-start apply; run apply peerup apply $P", v)
		case "gc":
			step = fmt.Sprintf("run update peerup update $P $T --version %d; m op-start gc; run gc peerup gc $P", v)
		}
		script := "verify; status; m complete-start; " + complete + "\n" + step + "\nm op-end"
		vm := l.start(t, ctx, disk, script, "")
		if _, err := vm.Marker(ctx, "op-start"); err != nil {
			t.Fatalf("round %d: %v\n%s", i, err, tailLog(vm))
		}
		// What the boot found, from inside: the version it came up on,
		// verify, and the completion of the interrupted operation.
		seen := map[string]vmtest.Marker{}
		for _, m := range vm.Markers() {
			seen[m.Key] = m
		}
		if b, _ := strconv.ParseUint(seen["booted"].Rest, 10, 64); b != current && b != prev {
			t.Fatalf("round %d: booted %q, want %d or %d\n%s", i, seen["booted"].Rest, prev, current, tailLog(vm))
		}
		if !strings.HasPrefix(seen["verify"].Rest, "rc=0") {
			t.Fatalf("round %d: verify after the cut: %s", i, seen["verify"].Rest)
		}
		if complete != "" {
			c, gc := seen["complete"], seen["completegc"]
			if !strings.HasPrefix(c.Rest, "rc=0") || !strings.HasPrefix(gc.Rest, "rc=0") {
				t.Fatalf("round %d: the interrupted operation did not complete: %s / %s", i, c.Rest, gc.Rest)
			}
			// A completion after a cut late in an update has little left to
			// do: the longest one seen is the estimate.
			if d := c.At - seen["complete-start"].At; !strings.Contains(c.Rest, "before the cut") {
				maxPeak = max(maxPeak, peakMiB(t, c.Rest))
				if d > measured {
					measured, took["update"] = d, d
				}
			}
			took["gc"] = gc.At - c.At
		}
		est := took[op]
		delay := time.Duration(rng.Int64N(int64(est) + 1))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		if err := vm.Kill(); err != nil {
			t.Fatal(err)
		}
		cuts++
		ended := false
		for _, m := range vm.Markers() {
			ended = ended || m.Key == "op-end"
		}
		if !ended {
			during++
		}
		t.Logf("round %d: power cut %.1fs into %s of v%d (it takes about %.1fs; cut before it ended: %v); booted at %.0fs, verified by %.0fs, completed by %.0fs",
			i, delay.Seconds(), op, v, est.Seconds(), !ended, seen["booted"].At.Seconds(), seen["verify"].At.Seconds(), seen["completegc"].At.Seconds())
		if err := vmtest.Fsck(ctx, disk); err != nil {
			t.Fatalf("round %d: fsck after the cut: %v", i, err)
		}
		_, cur := readBoot(t, ctx, disk)
		got, _ := strconv.ParseUint(strings.TrimPrefix(cur, "trees/"), 10, 64)
		if got != current && got != v {
			t.Fatalf("round %d: current is %s after a cut while going %d → %d", i, cur, current, v)
		}
		// The next round checks this state from inside and finishes the
		// operation before starting its own.
		complete = fmt.Sprintf(`if [ "$(readlink /sysroot/current)" = trees/%d ]; then m complete "rc=0 (applied before the cut)"; else run complete peerup update $P $T --version %d; fi; run completegc peerup gc $P`, v, v)
		prev, current = current, v
	}
	b := l.boot(t, ctx, disk, "verify; status; "+complete, "")
	b.want(t, "verify", "rc=0")
	b.want(t, "complete", "rc=0")
	st, cur := readBoot(t, ctx, disk)
	if want := fmt.Sprintf("trees/%d", current); cur != want {
		t.Fatalf("after the last completion: current %s, want %s (%+v)", cur, want, st)
	}
	return chainResult{cuts: cuts, during: during, maxPeak: maxPeak}
}
