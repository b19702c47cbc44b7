package apply_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/crashpoint"
	"github.com/peerup/peerup/internal/testfs"
)

// switchOp is one operation that switches the links, run on a copy of its
// baseline sysroot, and the link pair it ends with when it switches.
type switchOp struct {
	name string
	// base makes the baseline in dir (a fresh sysroot on the small fs).
	base func(t *testing.T, f *fleet, dir string)
	run  func(s *apply.Sysroot) (bootChoice *apply.BootChoice, err error)
	// old and new are current/previous before and after the switch.
	old, new [2]uint64
}

func switchOps() []switchOp {
	laptop := func(t *testing.T, f *fleet, dir string, tries int) *apply.Sysroot {
		s, err := apply.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		s.BootTries = tries
		f.update(s, 1)
		f.update(s, 2)
		return s
	}
	boot := func(s *apply.Sysroot) (*apply.BootChoice, error) {
		c, err := s.Boot("")
		return &c, err
	}
	return []switchOp{
		{name: "apply", old: [2]uint64{2, 1}, new: [2]uint64{3, 2},
			base: func(t *testing.T, f *fleet, dir string) {
				if _, err := f.pull(laptop(t, f, dir, 0), 3); err != nil {
					t.Fatal(err)
				}
			},
			run: func(s *apply.Sysroot) (*apply.BootChoice, error) { _, _, err := s.Apply(3); return nil, err }},
		{name: "rollback", old: [2]uint64{2, 1}, new: [2]uint64{1, 2},
			base: func(t *testing.T, f *fleet, dir string) { laptop(t, f, dir, 0) },
			run:  func(s *apply.Sysroot) (*apply.BootChoice, error) { _, err := s.RollbackDetail(); return nil, err }},
		// v3 has used up its one boot try without mark-good: this boot
		// falls back to v2 and marks v3 bad.
		{name: "boot fallback", old: [2]uint64{3, 2}, new: [2]uint64{2, 3},
			base: func(t *testing.T, f *fleet, dir string) {
				s := laptop(t, f, dir, 1)
				f.update(s, 3)
				if _, err := s.Boot(""); err != nil {
					t.Fatal(err)
				}
			},
			run: boot},
		{name: "boot revert", old: [2]uint64{2, 1}, new: [2]uint64{1, 2},
			base: func(t *testing.T, f *fleet, dir string) {
				if err := laptop(t, f, dir, 0).RevertNextBoot(); err != nil {
					t.Fatal(err)
				}
			},
			run: boot},
	}
}

// TestSwitchOnFullDisk: the disk fills up before each step of each switch
// (an apply, an admin's rollback, the boot step's fallback and revert), a
// real ENOSPC from a tmpfs out of inodes and blocks. Each run leaves the
// old link pair or the new one and never a journal, and what it returns
// says which: nil or "switched to version" for the new, ErrNotSwitched for
// the old. Once space is freed the same operation completes.
func TestSwitchOnFullDisk(t *testing.T) {
	fs := testfs.Tmpfs(t, "size=48m,nr_inodes=3000")
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	for v := 1; v <= 3; v++ {
		write(t, tree+"/etc/os-release", fmt.Sprintf("VERSION=%d\n", v), 0o644)
		f.publish(tree, uint64(v))
	}
	for i, op := range switchOps() {
		t.Run(strings.ReplaceAll(op.name, " ", "-"), func(t *testing.T) {
			base := filepath.Join(fs, "base"+strconv.Itoa(i))
			op.base(t, f, base)
			defer os.RemoveAll(base)
			// fresh copies the baseline to run one switch on, with an empty
			// folder for the filler.
			fresh := func() (*apply.Sysroot, string, string) {
				dir := filepath.Join(fs, "run")
				os.RemoveAll(dir)
				if out, err := exec.Command("cp", "-a", base, dir).CombinedOutput(); err != nil {
					t.Fatalf("copy baseline: %v %s", err, out)
				}
				filler := filepath.Join(fs, "filler")
				os.RemoveAll(filler)
				os.Mkdir(filler, 0o700)
				s, err := apply.Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				return s, dir, filler
			}
			s, _, _ := fresh()
			points := 0
			s.Fault = func(string) { points++ }
			if _, err := op.run(s); err != nil {
				t.Fatalf("without a full disk: %v", err)
			}
			if points < 3 {
				t.Fatalf("only %d points", points)
			}
			outcomes := map[string]int{}
			for k := 1; k <= points; k++ {
				s, dir, filler := fresh()
				n, at := 0, ""
				s.Fault = func(p string) {
					if n++; n == k {
						at = p
						testfs.Fill(t, filler)
					}
				}
				choice, err := op.run(s)
				os.RemoveAll(filler)
				s.Fault = nil
				where := fmt.Sprintf("disk full before %q (point %d of %d)", at, k, points)
				if _, jerr := os.Stat(filepath.Join(dir, "peerup", "switch")); jerr == nil {
					t.Fatalf("%s: a switch journal is left (err %v)", where, err)
				}
				st, serr := s.Status()
				if serr != nil || st.Pending != nil {
					t.Fatalf("%s: status %+v, %v", where, st, serr)
				}
				got := [2]uint64{st.Current, st.Previous}
				if got != op.old && got != op.new {
					t.Fatalf("%s: links %v, neither the old %v nor the new %v (err %v)", where, got, op.old, op.new, err)
				}
				switched := got == op.new
				// What the operation said must match what it did.
				var said bool
				switch {
				case choice != nil && err == nil:
					// A boot starts previous either way; only a switch
					// that failed says it was for this boot only.
					said = !strings.Contains(choice.Reason, "for this boot only")
					if choice.Version != op.new[0] {
						t.Fatalf("%s: booting %d, want %d", where, choice.Version, op.new[0])
					}
				case err == nil:
					said = true
				case errors.Is(err, apply.ErrNotSwitched):
					said = false
					if !strings.Contains(err.Error(), fmt.Sprintf("current is still version %d", op.old[0])) {
						t.Errorf("%s: %v does not say what is current", where, err)
					}
				case errors.Is(err, apply.ErrSwitchPending):
					t.Fatalf("%s: a full disk left a switch pending: %v", where, err)
				default:
					said = strings.Contains(err.Error(), fmt.Sprintf("switched to version %d, but", op.new[0]))
					if !said && choice == nil {
						// Failed before the switch began (the boot step's
						// bookkeeping): it must still have changed nothing.
						said = false
					}
				}
				if said != switched {
					t.Fatalf("%s: links %v, but the operation said switched=%v: %v", where, got, said, err)
				}
				outcomes[fmt.Sprintf("switched=%v", switched)]++
				// With room again, the same operation gets there.
				if !switched {
					if _, err := op.run(s); err != nil {
						t.Fatalf("%s: rerun with space: %v", where, err)
					}
					if st, _ := s.Status(); st.Current != op.new[0] || st.Previous != op.new[1] {
						t.Fatalf("%s: after the rerun %+v, want %v", where, st, op.new)
					}
				}
			}
			t.Logf("%s: %d points: %v", op.name, points, outcomes)
		})
	}
}

// TestInterruptedSwitchIsReportedAndFinished: a switch stopped between its
// two renames (or before its journal is removed) is reported by Status as
// the state its journal will produce. A rollback asked again finishes the
// interrupted one and says so, instead of swapping back; asked once more,
// it changes nothing. An interrupted apply followed by a rollback goes back
// from the version the apply reached.
func TestInterruptedSwitchIsReportedAndFinished(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	for v := 1; v <= 3; v++ {
		write(t, tree+"/etc/os-release", fmt.Sprintf("VERSION=%d\n", v), 0o644)
		f.publish(tree, uint64(v))
	}
	tests := []struct {
		op, point   string
		pending     apply.PendingSwitch
		rollback    apply.RollbackResult
		cur, prev   uint64
		linkCurrent string // what the current link names while pending
	}{
		{"rollback", "rename previous", apply.PendingSwitch{Current: 1, Previous: 2, Rollback: true},
			apply.RollbackResult{From: 2, To: 1, Finished: true, Already: true}, 1, 2, "trees/1"},
		{"rollback", "remove switch journal", apply.PendingSwitch{Current: 1, Previous: 2, Rollback: true},
			apply.RollbackResult{From: 2, To: 1, Finished: true, Already: true}, 1, 2, "trees/1"},
		{"rollback", "rename current", apply.PendingSwitch{Current: 1, Previous: 2, Rollback: true},
			apply.RollbackResult{From: 2, To: 1, Finished: true, Already: true}, 1, 2, "trees/2"},
		{"apply", "rename previous", apply.PendingSwitch{Current: 3, Previous: 2},
			apply.RollbackResult{From: 3, To: 2}, 2, 3, "trees/3"},
	}
	for _, tc := range tests {
		t.Run(tc.op+" before "+strings.ReplaceAll(tc.point, " ", "-"), func(t *testing.T) {
			s := newSysroot(t)
			f.update(s, 1)
			f.update(s, 2)
			if tc.op == "apply" {
				if _, err := f.pull(s, 3); err != nil {
					t.Fatal(err)
				}
				crashpoint.Stop(t, s, tc.point, func() { s.Apply(3) })
			} else {
				crashpoint.Stop(t, s, tc.point, func() { s.Rollback() })
			}
			if l, _ := os.Readlink(filepath.Join(s.Dir(), "current")); l != tc.linkCurrent {
				t.Fatalf("current link %q, want %q while the switch is pending", l, tc.linkCurrent)
			}
			st, err := s.Status()
			if err != nil || st.Pending == nil || *st.Pending != tc.pending || st.Current != tc.pending.Current || st.Previous != tc.pending.Previous || st.Staged != 0 {
				t.Fatalf("status %+v (pending %+v), %v; want pending %+v", st, st.Pending, err, tc.pending)
			}
			r, err := s.RollbackDetail()
			if err != nil || r != tc.rollback {
				t.Fatalf("rollback: %+v, %v; want %+v", r, err, tc.rollback)
			}
			st, _ = s.Status()
			if st.Pending != nil || st.Current != tc.cur || st.Previous != tc.prev {
				t.Fatalf("after the rollback: %+v, want current %d previous %d", st, tc.cur, tc.prev)
			}
			r, err = s.RollbackDetail()
			if err != nil || !r.Already || r.Finished || r.To != tc.cur {
				t.Fatalf("rollback once more: %+v, %v; want nothing changed", r, err)
			}
			checkInvariants(t, s, "after the rollbacks")
		})
	}
}

// TestRevertNextBootIsIdempotentToo: rollback --next-boot is a rollback the
// boot step does, so once current is the older version it is refused as
// already done, and a request left from before an admin's rollback does
// not swap the links back at boot.
func TestRevertNextBootIsIdempotentToo(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	s := newSysroot(t)
	for v := uint64(1); v <= 2; v++ {
		write(t, tree+"/etc/os-release", fmt.Sprintf("VERSION=%d\n", v), 0o644)
		f.publish(tree, v)
		f.update(s, v)
	}
	if err := s.RevertNextBoot(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Rollback(); err != nil { // the admin does it now as well
		t.Fatal(err)
	}
	if err := s.RevertNextBoot(); !errors.Is(err, apply.ErrRolledBack) || !strings.Contains(err.Error(), "current is version 1 (previous: 2)") {
		t.Fatalf("revert-next-boot after a rollback: %v, want ErrRolledBack saying what is current", err)
	}
	c, err := s.Boot("")
	if err != nil || c.Version != 1 || !strings.Contains(c.Reason, "already the older one") {
		t.Fatalf("boot with the earlier request: %+v, %v; want current (1), saying why", c, err)
	}
	if st, _ := s.Status(); st.Current != 1 || st.Previous != 2 {
		t.Fatalf("after the boot: %+v", st)
	}
	if c, err := s.Boot(""); err != nil || c.Reason != "current" {
		t.Fatalf("the request stayed: %+v, %v", c, err)
	}
}
