package apply_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/daemon"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// The crash harness re-runs this test binary as a child that performs one
// operation and exits abruptly at its k-th change to the disk: no deferred
// cleanup runs, as after a power cut or kill -9 (the page cache survives,
// as it does after a process crash). With PEERUP_CRASH_STOP set the child
// stops itself there instead (SIGSTOP), for the power-loss model
// (powerloss_test.go) to capture the disk under it.
func TestMain(m *testing.M) {
	if op := os.Getenv("PEERUP_CRASH_OP"); op != "" {
		os.Exit(crashChild(op))
	}
	os.Exit(m.Run())
}

const crashExit = 77

func crashChild(op string) int {
	k, _ := strconv.Atoi(os.Getenv("PEERUP_CRASH_AT"))
	s, err := apply.Open(os.Getenv("PEERUP_CRASH_SYSROOT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	n := 0
	s.Fault = func(point string) {
		n++
		if n != k {
			return
		}
		if os.Getenv("PEERUP_CRASH_STOP") != "" {
			fmt.Fprintln(os.Stderr, "stopped at", point)
			unix.Kill(os.Getpid(), unix.SIGSTOP)
			return
		}
		fmt.Fprintln(os.Stderr, "crash at", point)
		os.Exit(crashExit)
	}
	if err := runOp(s, op); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(n) // the number of points passed, for the parent's count
	return 0
}

func runOp(s *apply.Sysroot, op string) error {
	ctx := context.Background()
	switch op {
	case "update":
		kr, err := manifest.LoadKeyring(os.Getenv("PEERUP_CRASH_TRUST"))
		if err != nil {
			return err
		}
		src, err := transfer.NewClient(os.Getenv("PEERUP_CRASH_URL"), nil)
		if err != nil {
			return err
		}
		// As peerup update: pull, switch, prune.
		_, _, err = s.Update(ctx, src, apply.PullOptions{Version: 3, Trust: kr})
		return err
	case "rollback":
		_, _, err := s.Rollback()
		return err
	case "gc":
		_, err := s.GC(-1)
		return err
	case "repair":
		src, err := transfer.NewClient(os.Getenv("PEERUP_CRASH_URL"), nil)
		if err != nil {
			return err
		}
		_, err = s.Repair(ctx, src)
		return err
	case "daemon":
		// The daemon's own fetch and apply, by policy, from a static peer.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		applied := make(chan struct{})
		d, err := daemon.Start(ctx, daemon.Config{Sysroot: s.Dir(), Trust: []string{os.Getenv("PEERUP_CRASH_TRUST")},
			Listen: "127.0.0.1:0", Bus: "none", Policy: "auto", Peers: []string{os.Getenv("PEERUP_CRASH_URL")},
			Fault: s.Fault}, nil, nil)
		if err != nil {
			return err
		}
		obs := &appliedObserver{ch: applied}
		d.Core.Observe(obs)
		// It may have finished, or had nothing to do, before we listened.
		if d.Core.Props().CurrentVersion == 3 {
			obs.once.Do(func() { close(applied) })
		}
		select {
		case <-applied:
		case <-time.After(60 * time.Second):
			return fmt.Errorf("the daemon did not apply: %+v", d.Core.Props())
		}
		cancel()
		d.Wait(ctx)
		return nil
	}
	return fmt.Errorf("unknown op %q", op)
}

// appliedObserver closes ch when the daemon has v3 applied: by applying it
// now, or by finding after its poll that a crashed run already had.
type appliedObserver struct {
	ch   chan struct{}
	once sync.Once
}

func (a *appliedObserver) PropsChanged(old, cur daemon.Props) {
	done := cur.State == daemon.StateUpdateApplied ||
		cur.State == daemon.StateIdle && old.State == daemon.StatePolling && cur.CurrentVersion == 3
	if done && old.State != cur.State {
		a.once.Do(func() { close(a.ch) })
	}
}
func (a *appliedObserver) UpdateReady(uint64) {}

// checkInvariants asserts SPEC §7's promises about a sysroot after a crash
// (sysrootBroken).
func checkInvariants(t *testing.T, s *apply.Sysroot, where string) {
	t.Helper()
	if bad := sysrootBroken(s, nil); len(bad) > 0 {
		t.Fatalf("%s: %s", where, strings.Join(bad, "; "))
	}
}

// sysrootBroken lists how a sysroot breaks SPEC §7's promises: current
// names a complete tree that matches its signed manifest, so does previous
// if it exists, and every object in the store has the bytes its name
// promises. ex, if set, excuses damage the caller made before (what a
// repair starts from).
func sysrootBroken(s *apply.Sysroot, ex excuses) []string {
	st, err := s.Status()
	if err != nil {
		return []string{fmt.Sprintf("status: %v", err)}
	}
	var bad []string
	if st.Current == 0 {
		bad = append(bad, "no current version")
	}
	probs, err := s.Verify(context.Background())
	if err != nil {
		bad = append(bad, fmt.Sprintf("verify: %v", err))
	}
	for i := range probs {
		if ex == nil || !ex.problem(probs[i]) {
			bad = append(bad, "kept tree does not match its manifest: "+probs[i].String())
		}
	}
	objects := filepath.Join(s.Repo().Dir(), "objects")
	filepath.WalkDir(objects, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			bad = append(bad, fmt.Sprintf("object %s: %v", d.Name(), err))
		} else if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != d.Name() && (ex == nil || !ex.object(d.Name(), b)) {
			bad = append(bad, fmt.Sprintf("object %s holds other bytes (%d bytes)", d.Name(), len(b)))
		}
		return nil
	})
	return bad
}

// excuses says which damage a check passes over.
type excuses interface {
	problem(p apply.Problem) bool
	// object: an object named name holding data (nil: missing).
	object(name string, data []byte) bool
}

func TestCrashAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("crash harness: skipped with -short")
	}
	f, _ := libraryReleases(t, 3, nil)
	pubs, _ := filepath.Glob(filepath.Join(filepath.Dir(f.repo.Dir()), "*.pub"))
	// The baseline every crash starts from: v2 current, v1 previous, v3
	// published but not fetched.
	base := newSysroot(t)
	f.update(base, 1)
	f.update(base, 2)
	// The running v2 has edited its /etc: whatever the crash, the current
	// tree keeps these edits (v2's own, or v3's merge of them).
	etcEdits := nodeEtcEdits()
	for p, data := range etcEdits {
		write(t, filepath.Join(base.Dir(), "current", p), data, 0o640)
	}
	checkEtc := func(s *apply.Sysroot, where string) {
		t.Helper()
		for p, want := range etcEdits {
			if got, _ := os.ReadFile(filepath.Join(s.Dir(), "current", p)); string(got) != want {
				t.Fatalf("%s: current/%s = %q, want the node's %q", where, p, got, want)
			}
		}
	}
	// gc needs something to collect: v3 current, v2 previous, v1's
	// manifest, objects and files still in the store.
	gcBase := newSysroot(t)
	f.update(gcBase, 1)
	f.update(gcBase, 2)
	f.update(gcBase, 3)
	// repair needs damage to repair, of every kind: in place through a
	// hard link (trees and store), a tree path replaced, an object lost
	// from the store, and the temporaries an older repair left.
	repairBase := filepath.Join(t.TempDir(), "sysroot")
	if out, err := exec.Command("cp", "-a", base.Dir(), repairBase).CombinedOutput(); err != nil {
		t.Fatalf("copy baseline: %v %s", err, out)
	}
	damage(t, repairBase)
	damaged := problemSet(t, repairBase)
	if len(damaged) < 6 {
		t.Fatalf("the damaged baseline shows only %v", damaged)
	}
	bin, _ := os.Executable()
	total := 0
	for _, op := range []string{"update", "rollback", "gc", "daemon", "repair"} {
		if only := os.Getenv("PEERUP_CRASH_ONLY"); only != "" && only != op {
			continue // one operation's points, while working on it
		}
		run := func(k int, dir string) (int, string) {
			cmd := exec.Command(bin)
			cmd.Env = append(os.Environ(), "PEERUP_CRASH_OP="+op, "PEERUP_CRASH_AT="+strconv.Itoa(k),
				"PEERUP_CRASH_SYSROOT="+dir, "PEERUP_CRASH_URL="+f.url, "PEERUP_CRASH_TRUST="+pubs[0])
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			return code, string(out)
		}
		from := base.Dir()
		switch op {
		case "gc":
			from = gcBase.Dir()
		case "repair":
			from = repairBase
		}
		fresh := func() string {
			dir := filepath.Join(t.TempDir(), "sysroot")
			if out, err := exec.Command("cp", "-a", from, dir).CombinedOutput(); err != nil {
				t.Fatalf("copy baseline: %v %s", err, out)
			}
			return dir
		}
		// A run without a crash counts the points.
		whole := fresh()
		code, out := run(0, whole)
		if code != 0 {
			t.Fatalf("%s without a crash: exit %d\n%s", op, code, out)
		}
		if op == "repair" {
			s, err := apply.Open(whole)
			if err != nil {
				t.Fatal(err)
			}
			checkRepaired(t, s, "repair without a crash")
		}
		points, _ := strconv.Atoi(strings.TrimSpace(out))
		for k := 1; k <= points; k++ {
			dir := fresh()
			code, crashOut := run(k, dir)
			if code != crashExit {
				t.Fatalf("%s, crash at point %d of %d: exit %d\n%s", op, k, points, code, out)
			}
			s, err := apply.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			where := fmt.Sprintf("%s crashed at point %d of %d (%s)", op, k, points, strings.TrimSpace(crashOut))
			if op == "repair" {
				// The damage it began with may remain, but none is added:
				// what matched its manifest, in the trees and in the store,
				// still does.
				for p := range problemSet(t, dir) {
					if !damaged[p] {
						t.Fatalf("%s: a problem the damage did not make: %s", where, p)
					}
				}
			} else {
				checkInvariants(t, s, where)
			}
			if op == "update" || op == "daemon" || op == "repair" {
				checkEtc(s, where)
			}
			// Restart: the same operation, uninterrupted, must succeed and
			// leave no debris behind.
			if code, out := run(0, dir); code != 0 {
				// A crash after the last switch has nothing left to redo:
				// the rerun is refused as "not newer", which is right.
				if st, _ := s.Status(); !((op == "update" || op == "daemon") && st.Current == 3 && strings.Contains(out, "not newer")) {
					t.Fatalf("%s: the rerun failed: exit %d\n%s", where, code, out)
				}
			}
			checkInvariants(t, s, where+", after the rerun")
			if left, _ := filepath.Glob(filepath.Join(dir, "trees", ".tmp-*")); len(left) > 0 {
				t.Fatalf("%s: half-built trees left after the rerun: %v", where, left)
			}
			if op == "repair" {
				checkRepaired(t, s, where+", after the rerun")
			}
			if op == "update" || op == "daemon" {
				if st, _ := s.Status(); st.Current != 3 {
					t.Fatalf("%s: after the rerun current is v%d, want 3", where, st.Current)
				}
				checkEtc(s, where+", after the rerun")
			}
		}
		t.Logf("%s: %d crash points, invariants held at each", op, points)
		total += points
	}
	t.Logf("%d crash points in all", total)
	if total < 50 && os.Getenv("PEERUP_CRASH_ONLY") == "" {
		t.Errorf("only %d crash points covered", total)
	}
}

// damage breaks a copy of the crash baseline (v2 current, v1 previous) in
// every way repair mends.
func damage(t *testing.T, dir string) {
	t.Helper()
	// Edited in place through current: the inode v1, v2 and the store share.
	editInPlace(t, filepath.Join(dir, "current/usr/lib/big.so"))
	// Replaced in v2 by another file: the store keeps the good bytes.
	lib := filepath.Join(dir, "trees/2/usr/lib/libschool.so.1")
	write(t, lib+".new", "not the library", 0o755)
	if err := os.Rename(lib+".new", lib); err != nil {
		t.Fatal(err)
	}
	// Lost from the store; the trees still have it.
	s, err := apply.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.Repo().Path(manifest.Digest(sha256.Sum256([]byte("same bytes"))))); err != nil {
		t.Fatal(err)
	}
	// What an older peerup's repair, killed, left in the trees.
	write(t, filepath.Join(dir, "trees/2/usr/bin/tool.peerup-repair.tmp"), "half a copy", 0o600)
	write(t, filepath.Join(dir, "trees/1/usr/lib/big.so.peerup-repair"), "a whole copy", 0o755)
}

// problemSet is what verify finds in the sysroot at dir, each problem as a
// line without the link count (which repair changes as it goes).
func problemSet(t *testing.T, dir string) map[string]bool {
	t.Helper()
	s, err := apply.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	probs, err := s.Verify(context.Background())
	if err != nil {
		t.Fatalf("verify %s: %v", dir, err)
	}
	out := map[string]bool{}
	for _, p := range probs {
		line, _, _ := strings.Cut(p.String(), "; the file is hard-linked")
		out[line] = true
	}
	return out
}

// checkRepaired asserts a repair's end: the trees and every object current
// and previous need verify (checkInvariants), and nothing a repair makes
// is left behind, in the trees or in staging.
func checkRepaired(t *testing.T, s *apply.Sysroot, where string) {
	t.Helper()
	checkInvariants(t, s, where)
	st, _ := s.Status()
	for _, v := range []uint64{st.Current, st.Previous} {
		for _, e := range storedEntries(t, s, v) {
			if e.Type != manifest.TypeFile {
				continue
			}
			b, err := os.ReadFile(s.Repo().Path(e.SHA256))
			if err != nil || sha256.Sum256(b) != e.SHA256 {
				t.Fatalf("%s: version %d's object for %s: %v", where, v, e.Path, err)
			}
		}
	}
	filepath.WalkDir(filepath.Join(s.Dir(), "trees"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".peerup-repair") {
			t.Fatalf("%s: a repair temporary left: %s", where, p)
		}
		return err
	})
	if left, _ := os.ReadDir(s.Repo().Layout().Staging()); len(left) > 0 {
		t.Fatalf("%s: staging holds %d entries after the repair", where, len(left))
	}
}

// storedEntries is version v's stored manifest's entries, whole: a test's
// manifests are small.
func storedEntries(t *testing.T, s *apply.Sysroot, v uint64) []manifest.Entry {
	t.Helper()
	st, err := s.Status()
	if err != nil {
		t.Fatal(err)
	}
	mf, err := s.Repo().OpenVersion(st.Image, v)
	if err != nil {
		t.Fatal(err)
	}
	defer mf.Close()
	m, err := manifest.ReadAll(mf.Reader())
	if err != nil {
		t.Fatal(err)
	}
	return m.Entries
}
