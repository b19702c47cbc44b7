package apply_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
)

// The power-loss model. The crash harness (crash_test.go) ends a process,
// and the page cache survives it; a power cut also loses every write the
// filesystem had not yet sent to the disk: unsynced data, delayed
// allocations, metadata the journal had not committed. Here the sysroot
// lives on a small filesystem image attached to a loop device. The
// operation runs in a child that stops itself (SIGSTOP) at a fault point,
// or is stopped after a random delay, and the disk is captured at that
// moment: the loop device's backing file, read through the host's page
// cache, holds exactly what the filesystem has submitted to its block
// device (written-back data, committed journal blocks) and nothing it still
// holds in its own caches. sync or fsfreeze would flush those and hide the
// lost writes, so neither is used. A second copy is taken once the
// journal has committed (cut). Each copy's journal is replayed, as at boot,
// and its filesystem checked (e2fsck, xfs_repair); then it is mounted and
// SPEC §7's invariants are checked on what is left, before and after the
// interrupted operation is run again.
//
// dm-log-writes or dm-flakey would also model a disk cache that reorders or
// drops writes between flushes; the loop device keeps every completed write
// in order, a weaker model, but one that needs no device mapper (the
// kernel this was written on has none). ext4 is mounted noauto_da_alloc,commit=1: no
// implicit flush on rename-over-truncate, so a file renamed without fsync
// comes back empty, and the journal commits every second, so renames reach
// the disk long before the data under them.

// powerFS is a filesystem the model runs on.
type powerFS struct {
	name  string
	size  int64                  // the image's size
	mkfs  []string               // the command, before the image's path
	opts  string                 // mount options
	fsck  func(img string) error // replays a captured image's journal and checks the filesystem
	rands int                    // cuts at random delays, per operation
	every int                    // cuts at every so many fault points
}

func powerFilesystems() []powerFS {
	fss := []powerFS{{
		name: "ext4", size: 64 << 20,
		mkfs: []string{"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"},
		opts: "noauto_da_alloc,commit=1",
		fsck: func(img string) error {
			// The journal replays (exit 1: the image changed), and then a
			// full check must find nothing to fix: whatever the journal
			// held, ext4 itself came through the cut.
			out, err := exec.Command("e2fsck", "-p", "-E", "journal_only", img).CombinedOutput()
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == 1 {
				err = nil
			}
			if err != nil {
				return fmt.Errorf("e2fsck -E journal_only: %v\n%s", err, out)
			}
			if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
				return fmt.Errorf("e2fsck -fn after the journal's replay: %v\n%s", err, out)
			}
			return nil
		},
		rands: 3, every: 1,
	}}
	if _, err := exec.LookPath("mkfs.xfs"); err == nil {
		// 300 MiB is the smallest filesystem mkfs.xfs makes; the image is
		// sparse. Every other fault point, to keep make test short.
		fss = append(fss, powerFS{name: "xfs", size: 300 << 20, mkfs: []string{"mkfs.xfs", "-q", "-f"}, opts: "nouuid",
			fsck: xfsCheck, rands: 2, every: 2})
	}
	return fss
}

// xfsCheck replays the log of the XFS image img (xfs_repair will not: a
// mount does) and then has xfs_repair -n find nothing to fix.
func xfsCheck(img string) error {
	dir, err := os.MkdirTemp(filepath.Dir(img), "replay-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if out, err := exec.Command("mount", "-t", "xfs", "-o", "loop,nouuid", img, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mount to replay the log: %v %s", err, out)
	}
	if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("umount after replaying the log: %v %s", err, out)
	}
	if out, err := exec.Command("xfs_repair", "-n", img).CombinedOutput(); err != nil {
		return fmt.Errorf("xfs_repair -n after the log's replay: %v\n%s", err, out)
	}
	return nil
}

// powerOp is an operation the model cuts.
type powerOp struct {
	name string
	base string // the baseline image it starts from
	// The link pairs (current, previous) a cut may leave.
	states [][2]uint64
}

func TestPowerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("power-loss model: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("power-loss model: needs root for loop devices and mounts")
	}
	for _, tool := range []string{"losetup", "mount", "umount", "mkfs.ext4", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("power-loss model: %s not found (util-linux, mount, e2fsprogs)", tool)
		}
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("power-loss model: no loop devices on this kernel: %v", err)
	}
	f, _ := libraryReleases(t, 3, nil)
	for i, fsys := range powerFilesystems() {
		t.Run(fsys.name, func(t *testing.T) {
			h := &powerHarness{t: t, f: f, fs: fsys, dir: t.TempDir(), rng: rand.New(rand.NewPCG(20, uint64(i)))}
			h.run()
		})
	}
}

type powerHarness struct {
	t   *testing.T
	f   *fleet
	fs  powerFS
	dir string
	rng *rand.Rand
	// damaged is the repair baseline's damage.
	damaged *damageBaseline
}

func (h *powerHarness) run() {
	t := h.t
	bases := h.makeBases()
	ops := []powerOp{
		{name: "update", base: bases["two"], states: [][2]uint64{{2, 1}, {3, 1}, {3, 2}}},
		{name: "rollback", base: bases["two"], states: [][2]uint64{{2, 1}, {1, 1}, {1, 2}}},
		{name: "gc", base: bases["three"], states: [][2]uint64{{3, 2}}},
		{name: "repair", base: bases["damaged"], states: [][2]uint64{{2, 1}}},
	}
	cuts, violations := 0, 0
	for _, op := range ops {
		// An uninterrupted run counts the fault points and times the
		// operation, for the random delays.
		points, took := h.countPoints(op)
		n, bad, faults := 0, 0, 0
		for k := 1; k <= points; k += h.fs.every {
			if v := h.cut(op, k, 0); v >= 0 {
				bad += v
				n++
				faults++
			}
		}
		for range h.fs.rands {
			bad += h.cut(op, 0, time.Duration(h.rng.Int64N(int64(took)+1)))
			n++
		}
		t.Logf("%s on %s (%s): %d cut points (%d fault points, %d random delays; each checked as cut and with the journal committed), %d violations",
			op.name, h.fs.name, h.fs.opts, n, faults, h.fs.rands, bad)
		cuts += n
		violations += bad
	}
	t.Logf("power-loss model on %s (%s): %d cut points, %d violations", h.fs.name, h.fs.opts, cuts, violations)
	if h.fs.name == "ext4" && cuts < 40 {
		t.Errorf("only %d cut points on ext4, want at least 40", cuts)
	}
}

// makeBases builds the baseline images: "two" (v2 current with the node's
// /etc edits, v1 previous, v3 published but not fetched), "three" (v3
// current, v2 previous, v1's tree and objects left for gc) and "damaged"
// ("two" with the crash harness's damage, for repair).
func (h *powerHarness) makeBases() map[string]string {
	t := h.t
	bases := map[string]string{}
	build := func(name string, steps func(s *apply.Sysroot)) {
		img := filepath.Join(h.dir, name+".img")
		mkImage(t, h.fs, img)
		m, err := mountImage(t, h.fs, img, filepath.Join(h.dir, "base"))
		if err != nil {
			if len(bases) == 0 {
				t.Skipf("power-loss model: cannot mount a %s image on a loop device: %v", h.fs.name, err)
			}
			t.Fatal(err)
		}
		s, err := apply.Open(filepath.Join(m.dir, "sysroot"))
		if err != nil {
			t.Fatal(err)
		}
		steps(s)
		// The baseline is what the device holds after a syncfs, copied
		// while still mounted: umount alone does not flush where another
		// process's mount namespace (unshare -m) has cloned the mount and
		// keeps the filesystem alive, and such a filesystem may write to
		// its image later.
		if err := fsutil.Syncfs(m.dir); err != nil {
			t.Fatal(err)
		}
		base := filepath.Join(h.dir, name+".base")
		if err := captureDisk(m.dev, img, base); err != nil {
			t.Fatal(err)
		}
		if err := m.close(); err != nil {
			t.Fatal(err)
		}
		os.Remove(img)
		bases[name] = base
	}
	two := func(s *apply.Sysroot) {
		h.f.update(s, 1)
		h.f.update(s, 2)
		for p, data := range nodeEtcEdits() {
			write(t, filepath.Join(s.Dir(), "current", p), data, 0o640)
		}
	}
	build("two", two)
	build("three", func(s *apply.Sysroot) {
		h.f.update(s, 1)
		h.f.update(s, 2)
		h.f.update(s, 3)
	})
	// The crash harness's damage, of every kind repair mends.
	build("damaged", func(s *apply.Sysroot) {
		two(s)
		damage(t, s.Dir())
		h.damaged = recordDamage(t, s)
	})
	return bases
}

// nodeEtcEdits are the running v2's own edits of its /etc: whatever the
// cut, the current tree keeps them (v2's own, or v3's merge of them).
func nodeEtcEdits() map[string]string {
	return map[string]string{"etc/hostname": "room-12-laptop-07\n", "etc/shadow": "root:*:1::::::\npupil:*:19000::::::\n",
		"etc/os-release": "VERSION=2 with a local note\n"}
}

func mkImage(t *testing.T, fsys powerFS, img string) {
	t.Helper()
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(fsys.size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	args := append(slices.Clone(fsys.mkfs[1:]), img)
	if out, err := exec.Command(fsys.mkfs[0], args...).CombinedOutput(); err != nil {
		t.Skipf("power-loss model: %s: %v %s", fsys.mkfs[0], err, out)
	}
}

// loopMount is an image attached to a loop device and mounted.
type loopMount struct {
	img, dev, dir string
}

func mountImage(t *testing.T, fsys powerFS, img, dir string) (*loopMount, error) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("losetup: %v %s", err, out)
	}
	m := &loopMount{img: img, dev: strings.TrimSpace(string(out)), dir: dir}
	t.Cleanup(func() { m.close() })
	if out, err := exec.Command("mount", "-t", fsys.name, "-o", fsys.opts, m.dev, dir).CombinedOutput(); err != nil {
		exec.Command("losetup", "-d", m.dev).Run()
		m.dev = ""
		return nil, fmt.Errorf("mount %s: %v %s", fsys.name, err, out)
	}
	return m, nil
}

func (m *loopMount) close() error {
	if m.dev == "" {
		return nil
	}
	if out, err := exec.Command("umount", m.dir).CombinedOutput(); err != nil {
		return fmt.Errorf("umount %s: %v %s", m.dir, err, out)
	}
	dev := m.dev
	m.dev = ""
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -d: %v %s", err, out)
	}
	// A device another mount namespace still holds (see makeBases) is
	// only marked to detach when that one lets go.
	return nil
}

// child starts the operation on the sysroot at dir in a re-run of this
// binary (crash_test.go's TestMain), stopping itself at fault point k
// (0: none).
func (h *powerHarness) child(op string, dir string, k int) (*exec.Cmd, *bytes.Buffer) {
	bin, err := os.Executable()
	if err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PEERUP_CRASH_OP="+op, "PEERUP_CRASH_AT="+strconv.Itoa(k), "PEERUP_CRASH_STOP=1",
		"PEERUP_CRASH_SYSROOT="+dir, "PEERUP_CRASH_URL="+h.f.url, "PEERUP_CRASH_TRUST="+h.f.pub)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	return cmd, out
}

func (h *powerHarness) countPoints(op powerOp) (int, time.Duration) {
	t := h.t
	img := filepath.Join(h.dir, "live.img")
	if err := copySparse(img, op.base); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(img)
	m, err := mountImage(t, h.fs, img, filepath.Join(h.dir, "live"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	start := time.Now()
	cmd, out := h.child(op.name, filepath.Join(m.dir, "sysroot"), 0)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s without a cut: %v\n%s", op.name, err, out)
	}
	took := time.Since(start)
	s, err := apply.Open(filepath.Join(m.dir, "sysroot"))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range h.check(s, op, true) {
		t.Errorf("%s on %s without a cut: %s", op.name, h.fs.name, b)
	}
	lines := strings.Fields(out.String())
	points, err := strconv.Atoi(lines[len(lines)-1])
	if err != nil {
		t.Fatalf("%s without a cut: no count of fault points in\n%s", op.name, out)
	}
	return points, took
}

// cldStopped is CLD_STOPPED (asm-generic/siginfo.h): waitid's code for a
// child stopped by a signal.
const cldStopped = 5

// cut runs op from its baseline, cuts the power at fault point k, or after
// delay if k is 0, and checks what the disk holds then. It returns the
// number of violations found (each reported with t.Errorf), or -1 if the
// run never reached point k (the count varies by a point or two between
// runs: a pull's parallel fetches, what gc finds to sweep).
func (h *powerHarness) cut(op powerOp, k int, delay time.Duration) int {
	t := h.t
	t.Helper()
	where := fmt.Sprintf("%s on %s, cut at fault point %d", op.name, h.fs.name, k)
	if k == 0 {
		where = fmt.Sprintf("%s on %s, cut after %v", op.name, h.fs.name, delay)
	}
	img := filepath.Join(h.dir, "live.img")
	defer os.Remove(img)
	if err := copySparse(img, op.base); err != nil {
		t.Fatal(err)
	}
	m, err := mountImage(t, h.fs, img, filepath.Join(h.dir, "live"))
	if err != nil {
		t.Fatal(err)
	}
	cmd, out := h.child(op.name, filepath.Join(m.dir, "sysroot"), k)
	// A child that hangs is killed, so that the wait below returns.
	watchdog := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	if k == 0 {
		time.Sleep(delay)
		cmd.Process.Signal(unix.SIGSTOP)
	}
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WSTOPPED|unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	watchdog.Stop()
	stopped := info.Code == cldStopped
	// The power fails now, or a moment later, once the journal has
	// committed what the operation did (as commit=1's timer would) but
	// the data it wrote and did not sync is still only in memory: an
	// fsync of a file beside the sysroot commits the running transaction
	// and writes no other file's delayed data. This second state is
	// where a rename that reached the disk before its file's bytes shows.
	now, later := filepath.Join(h.dir, "cut.img"), filepath.Join(h.dir, "cut-committed.img")
	defer os.Remove(now)
	defer os.Remove(later)
	if err := captureDisk(m.dev, img, now); err != nil {
		t.Fatal(err)
	}
	if err := commitJournal(filepath.Join(m.dir, "commit")); err != nil {
		t.Fatal(err)
	}
	if err := captureDisk(m.dev, img, later); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	err = cmd.Wait()
	if k > 0 && !stopped {
		if err != nil {
			t.Fatalf("%s: the child failed before the point: %v\n%s", where, err, out)
		}
		t.Logf("%s: the run ended before the point; not counted", where)
		m.close()
		return -1
	}
	if said := strings.TrimSpace(out.String()); said != "" {
		where += " (" + said + ")"
	}
	if k == 0 && !stopped {
		where += " (after the operation finished)"
	}
	if err := m.close(); err != nil {
		t.Fatal(err)
	}
	return h.after(op, where, now) + h.after(op, where+", the journal committed", later)
}

// commitJournal commits the filesystem's running journal transaction: it
// writes and fsyncs the file at p, which the sysroot does not use.
func commitJournal(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte{'.'})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// after boots the captured disk: replays its journal, checks the
// invariants, runs the operation again and checks them once more. It
// returns the number of violations, each reported with t.Errorf.
func (h *powerHarness) after(op powerOp, where, captured string) int {
	t := h.t
	t.Helper()
	var bad []string
	if h.fs.fsck != nil {
		if err := h.fs.fsck(captured); err != nil {
			bad = append(bad, err.Error())
		}
	}
	m, err := mountImage(t, h.fs, captured, filepath.Join(h.dir, "after"))
	if err != nil {
		t.Fatalf("%s: the captured disk does not mount: %v", where, err)
	}
	defer m.close()
	sysroot := filepath.Join(m.dir, "sysroot")
	s, err := apply.Open(sysroot)
	if err != nil {
		t.Fatal(err)
	}
	bad = append(bad, h.check(s, op, false)...)
	// The boot after the cut: the operation runs again, uninterrupted.
	cmd, out := h.child(op.name, sysroot, 0)
	if err := cmd.Wait(); err != nil {
		// A cut after the last switch's journal leaves nothing to redo
		// once the journal is finished: the rerun is refused as not
		// newer, which is right.
		if st, _ := s.Status(); !(op.name == "update" && st.Current == 3 && strings.Contains(out.String(), "not newer")) {
			bad = append(bad, fmt.Sprintf("the rerun failed: %v\n%s", err, out))
		}
	}
	for _, b := range h.check(s, op, true) {
		bad = append(bad, "after the rerun: "+b)
	}
	for _, b := range bad {
		t.Errorf("%s: %s", where, b)
	}
	if op.name == "repair" && len(bad) == 0 {
		// Nothing a repair makes is left behind (the crash harness's
		// check, which stops the test at the first problem).
		checkRepaired(t, s, where+", after the rerun")
	}
	return len(bad)
}

// check lists the invariants a sysroot breaks after a cut (or, done,
// after the rerun that followed).
func (h *powerHarness) check(s *apply.Sysroot, op powerOp, done bool) []string {
	var ex excuses
	if op.name == "repair" && !done {
		ex = h.damaged
	}
	bad := sysrootBroken(s, ex)
	st, err := s.Status()
	if err != nil {
		return bad // sysrootBroken said so
	}
	if !slices.Contains(op.states, [2]uint64{st.Current, st.Previous}) {
		bad = append(bad, fmt.Sprintf("links at current %d, previous %d; want one of %v", st.Current, st.Previous, op.states))
	}
	bad = append(bad, keptVersionsBroken(s, st, ex)...)
	if op.name == "update" || op.name == "repair" {
		for p, want := range nodeEtcEdits() {
			if got, _ := os.ReadFile(filepath.Join(s.Dir(), apply.LinkCurrent, p)); string(got) != want {
				bad = append(bad, fmt.Sprintf("current/%s = %q, want the node's %q", p, got, want))
			}
		}
	}
	if !done {
		return bad
	}
	left, _ := filepath.Glob(filepath.Join(s.Dir(), "trees", ".tmp-*"))
	temps, _ := filepath.Glob(filepath.Join(s.Dir(), ".*.tmp"))
	left = append(left, temps...)
	if _, err := os.Stat(filepath.Join(s.StateDir(), "switch")); err == nil {
		left = append(left, "peerup/switch")
	}
	if len(left) > 0 {
		bad = append(bad, fmt.Sprintf("left behind: %v", left))
	}
	switch op.name {
	case "update":
		if st.Current != 3 || st.Previous != 2 {
			bad = append(bad, fmt.Sprintf("current %d, previous %d; want 3 and 2", st.Current, st.Previous))
		}
	case "gc":
		if ix, err := s.Repo().ReadIndex(); err != nil {
			bad = append(bad, err.Error())
		} else if _, ok := ix.Find(st.Image, 1); ok {
			bad = append(bad, "version 1 is still in the index")
		}
		if _, err := os.Lstat(s.TreePath(1)); err == nil {
			bad = append(bad, "trees/1 is still there")
		}
	}
	return bad
}

// keptVersionsBroken lists what current's and previous's manifests need
// and the disk lacks: a file's object in the store, and (verify holds etc/
// to no manifest) a non-empty file of etc/ that came back empty, as a file
// renamed into place unsynced does.
func keptVersionsBroken(s *apply.Sysroot, st apply.Status, ex excuses) []string {
	var bad []string
	for i, v := range []uint64{st.Current, st.Previous} {
		if v == 0 || i == 1 && v == st.Current {
			continue
		}
		mf, err := s.Repo().OpenVersion(st.Image, v)
		if err != nil {
			bad = append(bad, fmt.Sprintf("version %d's manifest: %v", v, err))
			continue
		}
		r, err := manifest.NewReader(mf.Reader())
		for err == nil {
			var e *manifest.Entry
			if e, err = r.Next(); err != nil {
				break
			}
			if e.Type != manifest.TypeFile {
				continue
			}
			if _, serr := os.Lstat(s.Repo().Path(e.SHA256)); serr != nil && (ex == nil || !ex.object(e.SHA256.String(), nil)) {
				bad = append(bad, fmt.Sprintf("version %d: %s: its object is not in the store", v, e.Path))
			}
			if e.Path == "etc" || strings.HasPrefix(e.Path, "etc/") {
				fi, serr := os.Lstat(filepath.Join(s.TreePath(v), filepath.FromSlash(e.Path)))
				if serr == nil && fi.Mode().IsRegular() && fi.Size() == 0 && e.Size > 0 {
					bad = append(bad, fmt.Sprintf("version %d: %s is empty (the manifest has %d bytes)", v, e.Path, e.Size))
				}
			}
		}
		mf.Close()
		if err != nil && err != io.EOF {
			bad = append(bad, fmt.Sprintf("version %d's manifest: %v", v, err))
		}
	}
	return bad
}

// damageBaseline is the damage a repair starts from, which a cut repair
// may leave but not add to (SPEC §7): the problems verify finds, and the
// objects that hold other bytes than their names (by the hash of those
// bytes) or that current or previous needs and the store lacks ("").
type damageBaseline struct {
	problems map[string]bool
	objects  map[string]string
}

func recordDamage(t *testing.T, s *apply.Sysroot) *damageBaseline {
	t.Helper()
	d := &damageBaseline{problems: problemSet(t, s.Dir()), objects: map[string]string{}}
	filepath.WalkDir(s.Repo().Layout().Objects(), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		if b, err := os.ReadFile(p); err == nil && fmt.Sprintf("%x", sha256.Sum256(b)) != e.Name() {
			d.objects[e.Name()] = fmt.Sprintf("%x", sha256.Sum256(b))
		}
		return nil
	})
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{st.Current, st.Previous} {
		for _, e := range storedEntries(t, s, v) {
			if _, err := os.Lstat(s.Repo().Path(e.SHA256)); e.Type == manifest.TypeFile && err != nil {
				d.objects[e.SHA256.String()] = ""
			}
		}
	}
	if len(d.problems) == 0 || len(d.objects) == 0 {
		t.Fatalf("the repair baseline shows problems %v and bad objects %v; want damage of both", d.problems, d.objects)
	}
	return d
}

func (d *damageBaseline) problem(p apply.Problem) bool {
	// Without the link count, which a repair changes as it goes, as
	// problemSet has it.
	line, _, _ := strings.Cut(p.String(), "; the file is hard-linked")
	return d.problems[line]
}

// object excuses an object damaged in the baseline that holds the same
// bytes still or is missing (a repair takes a damaged object out before it
// puts the good one in), and one missing there that is missing still.
func (d *damageBaseline) object(name string, data []byte) bool {
	bad, ok := d.objects[name]
	return ok && (data == nil || bad != "" && fmt.Sprintf("%x", sha256.Sum256(data)) == bad)
}

// copySparse copies the image src to dst, leaving holes where src reads
// as zeros.
func copySparse(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	buf, zero := make([]byte, 64<<10), make([]byte, 64<<10)
	var off int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := out.WriteAt(buf[:n], off); werr != nil {
				out.Close()
				return werr
			}
		}
		off += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			out.Close()
			return err
		}
	}
	if err := out.Truncate(off); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// captureDisk copies what the loop device dev has written to its backing
// file img, as one moment's state: the copy counts only if no write was in
// flight when it began and none started or ended while it ran (the
// device's counters in sysfs), or a later write could show beside an older
// block it depends on. The child is stopped, so only the kernel's own
// writeback and journal commits race the copy, and a retry soon finds a
// quiet moment.
func captureDisk(dev, img, out string) error {
	stat := filepath.Join("/sys/block", filepath.Base(dev), "stat")
	read := func() ([]string, error) {
		b, err := os.ReadFile(stat)
		f := strings.Fields(string(b))
		if err == nil && len(f) < 15 {
			err = fmt.Errorf("%s: %q: too few fields", stat, b)
		}
		// Writes completed (4) and in flight (8), discards completed (11).
		return []string{f[4], f[8], f[11]}, err
	}
	for range 1000 {
		before, err := read()
		if err != nil {
			return err
		}
		if before[1] != "0" {
			time.Sleep(time.Millisecond)
			continue
		}
		if err := copySparse(out, img); err != nil {
			return err
		}
		after, err := read()
		if err != nil {
			return err
		}
		if slices.Equal(before, after) {
			return nil
		}
	}
	return fmt.Errorf("capture %s: the device never stayed quiet for a copy", dev)
}
