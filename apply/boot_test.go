package apply_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
)

// bootFleet gives a sysroot that ran v1 and has just applied v2.
func bootFleet(t *testing.T) (*fleet, *apply.Sysroot, string) {
	t.Helper()
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	f.publish(tree, 2)
	s := newSysroot(t)
	f.update(s, 1)
	s.MarkGood(0)
	f.update(s, 2)
	return f, s, tree
}

func boot(t *testing.T, s *apply.Sysroot, cmdline string) uint64 {
	t.Helper()
	c, err := s.Boot(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != s.TreePath(c.Version) {
		t.Fatalf("root %s for version %d", c.Root, c.Version)
	}
	if _, err := os.Stat(filepath.Join(c.Root, "etc/os-release")); err != nil {
		t.Fatalf("chosen root is not a complete tree: %v", err)
	}
	return c.Version
}

func TestBootSelection(t *testing.T) {
	const cmdline = "root=/dev/sda2 quiet"
	t.Run("normal boot of a good version", func(t *testing.T) {
		_, s, _ := bootFleet(t)
		s.MarkGood(0)
		for range 5 {
			if v := boot(t, s, cmdline); v != 2 {
				t.Fatalf("booted v%d, want 2", v)
			}
		}
	})
	t.Run("mark-good during the tries ends probation", func(t *testing.T) {
		_, s, _ := bootFleet(t)
		if v := boot(t, s, cmdline); v != 2 {
			t.Fatalf("first boot of v2 chose v%d", v)
		}
		if v, err := s.MarkGood(0); err != nil || v != 2 {
			t.Fatalf("mark-good: %d, %v", v, err)
		}
		for range 5 {
			if v := boot(t, s, cmdline); v != 2 {
				t.Fatalf("after mark-good booted v%d", v)
			}
		}
	})
	t.Run("tries exhausted: fall back, mark bad, never retry, newer welcome", func(t *testing.T) {
		f, s, tree := bootFleet(t)
		for i := range apply.DefaultBootTries {
			if v := boot(t, s, cmdline); v != 2 {
				t.Fatalf("boot %d chose v%d, want v2 on probation", i+1, v)
			}
		}
		if v := boot(t, s, cmdline); v != 1 {
			t.Fatalf("after %d failed boots chose v%d, want the fallback v1", apply.DefaultBootTries, v)
		}
		st, _ := s.Status()
		if st.Current != 1 || !s.IsBad(2) {
			t.Fatalf("status %+v, bad(2)=%v", st, s.IsBad(2))
		}
		if v := boot(t, s, cmdline); v != 1 {
			t.Fatalf("next boot chose v%d", v)
		}
		if _, err := f.pull(s, 0); !errors.Is(err, apply.ErrMarkedBad) {
			t.Fatalf("pulling the bad version again: %v", err)
		}
		write(t, tree+"/etc/os-release", "VERSION=3\n", 0o644)
		f.publish(tree, 3)
		f.update(s, 3)
		if v := boot(t, s, cmdline); v != 3 {
			t.Fatalf("newer version v3 not booted: v%d", v)
		}
	})
	t.Run("revert flag from rollback --next-boot", func(t *testing.T) {
		_, s, _ := bootFleet(t)
		s.MarkGood(0)
		if err := s.RevertNextBoot(); err != nil {
			t.Fatal(err)
		}
		if v := boot(t, s, cmdline); v != 1 {
			t.Fatalf("revert flag: booted v%d", v)
		}
		if v := boot(t, s, cmdline); v != 1 {
			t.Fatalf("the revert is lasting: booted v%d", v)
		}
		if st, _ := s.Status(); st.Current != 1 || st.Previous != 2 {
			t.Fatalf("status %+v", st)
		}
	})
	t.Run("kernel command line peerup.revert=1 for one boot", func(t *testing.T) {
		_, s, _ := bootFleet(t)
		s.MarkGood(0)
		if v := boot(t, s, cmdline+" peerup.revert=1"); v != 1 {
			t.Fatalf("peerup.revert=1: booted v%d", v)
		}
		if v := boot(t, s, cmdline); v != 2 {
			t.Fatalf("next plain boot: v%d", v)
		}
	})
	t.Run("after a fallback, a revert never boots the bad version", func(t *testing.T) {
		_, s, _ := bootFleet(t)
		for range apply.DefaultBootTries + 1 {
			boot(t, s, cmdline)
		}
		if st, _ := s.Status(); st.Current != 1 || st.Previous != 2 || !s.IsBad(2) {
			t.Fatalf("after the fallback: %+v", st)
		}
		if v := boot(t, s, cmdline+" peerup.revert=1"); v != 1 {
			t.Fatalf("peerup.revert=1 after a fallback booted v%d, the bad version", v)
		}
		// The fallback was a rollback: asking for one is refused as done.
		if err := s.RevertNextBoot(); !errors.Is(err, apply.ErrRolledBack) {
			t.Fatalf("rollback --next-boot after a fallback: %v, want ErrRolledBack", err)
		}
		if v := boot(t, s, cmdline); v != 1 {
			t.Fatalf("rollback --next-boot after a fallback booted v%d", v)
		}
		if st, _ := s.Status(); st.Current != 1 {
			t.Fatalf("the refused revert changed the links: %+v", st)
		}
	})
	t.Run("mark-good on a one-boot revert leaves current on probation", func(t *testing.T) {
		_, s, _ := bootFleet(t)
		if v := boot(t, s, cmdline+" peerup.revert=1"); v != 1 {
			t.Fatalf("revert booted v%d", v)
		}
		if _, err := s.MarkGood(1); !errors.Is(err, apply.ErrNotBooted) {
			t.Fatalf("mark-good of a revert boot: %v", err)
		}
		for i := range apply.DefaultBootTries {
			if v := boot(t, s, cmdline); v != 2 {
				t.Fatalf("probation boot %d chose v%d", i+1, v)
			}
		}
		if v := boot(t, s, cmdline); v != 1 {
			t.Fatalf("v2 never marked good, yet still booted (v%d)", v)
		}
	})
	t.Run("a garbled boot state still boots", func(t *testing.T) {
		_, s, _ := bootFleet(t)
		os.WriteFile(filepath.Join(s.StateDir(), "boot.json"), []byte("{tru"), 0o644)
		if v := boot(t, s, cmdline); v != 2 {
			t.Fatalf("booted v%d", v)
		}
	})
	t.Run("empty sysroot", func(t *testing.T) {
		s := newSysroot(t)
		if _, err := s.Boot(cmdline); err == nil || !strings.Contains(err.Error(), "no current") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestRollbackHoldsTheVersionLeft: after a rollback from v2 the newest
// version on offer is v2, which is held: neither the newest nor v2 by
// number is pulled, until v3 is published or the hold is lifted. An
// admin's hold and unmark-bad work the same way.
func TestRollbackHoldsTheVersionLeft(t *testing.T) {
	f, s, tree := bootFleet(t)
	if _, _, err := s.Rollback(); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Status(); st.Current != 1 || st.Held != 2 {
		t.Fatalf("after the rollback: %+v, want current 1 and v2 held", st)
	}
	newest := func() error {
		_, err := s.Pull(context.Background(), f.client(), apply.PullOptions{Trust: f.trust})
		return err
	}
	for _, pull := range []func() error{newest, func() error { _, err := f.pull(s, 2); return err }} {
		if err := pull(); !errors.Is(err, apply.ErrHeld) || !strings.Contains(err.Error(), "peerup unhold") {
			t.Fatalf("pull of the held version: %v, want ErrHeld saying how to lift it", err)
		}
	}
	if st, _ := s.Status(); st.Current != 1 || st.Staged != 0 {
		t.Fatalf("a held version was staged: %+v", st)
	}
	write(t, tree+"/etc/os-release", "VERSION=3\n", 0o644)
	f.publish(tree, 3)
	if err := newest(); err != nil {
		t.Fatalf("a version newer than the hold: %v", err)
	}
	if err := s.Hold(5); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pull(s, 3); !errors.Is(err, apply.ErrHeld) {
		t.Fatalf("pull of v3 under an admin's hold of 5: %v, want ErrHeld", err)
	}
	if err := s.Unhold(); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Status(); st.Held != 0 {
		t.Fatalf("after unhold: %+v", st)
	}
	if err := s.UnmarkBad(2); err == nil || !strings.Contains(err.Error(), "not marked bad") {
		t.Fatalf("unmark-bad of a version that is not: %v", err)
	}
}
