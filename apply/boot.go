package apply

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/peerup/peerup/internal/fsutil"
)

// ErrNotBooted means mark-good ran on a boot of another version than
// current (a one-boot revert): nothing is marked.
var ErrNotBooted = errors.New("current is not the version that booted")

// DefaultBootTries is how many boots a newly applied version gets to reach
// mark-good before the bootloader step falls back to previous.
const DefaultBootTries = 3

// bootState is SYSROOT/peerup/boot.json (SPEC.md §12).
type bootState struct {
	// Trying is the version on probation: applied, not yet marked good.
	Trying uint64 `json:"trying,omitempty"`
	// Left is how many more boots it may start before it is given up.
	Left int `json:"left,omitempty"`
	// Bad lists versions that failed their tries; they are never applied
	// again (a newer version still is).
	Bad []uint64 `json:"bad,omitempty"`
	// Held: no version up to this one is pulled or applied. A rollback
	// holds the version it left, so that an auto daemon does not install
	// it again at once; a newer version still is, and unhold lifts it.
	Held uint64 `json:"held,omitempty"`
}

func (s *Sysroot) bootPath() string   { return filepath.Join(s.StateDir(), "boot.json") }
func (s *Sysroot) revertPath() string { return filepath.Join(s.StateDir(), "revert-next-boot") }

func (s *Sysroot) readBoot() (bootState, error) {
	var b bootState
	data, err := os.ReadFile(s.bootPath())
	if errors.Is(err, fs.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return b, fmt.Errorf("read boot state: %w", err)
	}
	if err := json.Unmarshal(data, &b); err != nil {
		// A torn or garbled state file must not stop a boot: start over
		// without probation rather than refuse.
		return bootState{}, nil
	}
	return b, nil
}

func (s *Sysroot) writeBoot(b bootState) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return fsutil.WriteAtomic(s.bootPath(), append(data, '\n'))
}

// IsBad reports whether version v failed its boot tries.
func (s *Sysroot) IsBad(v uint64) bool {
	b, _ := s.readBoot()
	return slices.Contains(b.Bad, v)
}

// Refusal says why version v is not to be installed, wrapping
// ErrMarkedBad or ErrHeld, or is nil if it may be.
func (s *Sysroot) Refusal(v uint64) error {
	b, _ := s.readBoot()
	switch {
	case slices.Contains(b.Bad, v):
		return fmt.Errorf("%w (peerup unmark-bad %d to try it again)", ErrMarkedBad, v)
	case v <= b.Held:
		return fmt.Errorf("%w: versions up to %d are held (peerup unhold to release them)", ErrHeld, b.Held)
	}
	return nil
}

// Hold keeps every version up to v from being pulled or applied, until
// Unhold or a newer version.
func (s *Sysroot) Hold(v uint64) error {
	if v == 0 {
		return errors.New("hold: give a version")
	}
	return s.editBoot(func(b *bootState) { b.Held = v })
}

// Unhold lifts the hold.
func (s *Sysroot) Unhold() error { return s.editBoot(func(b *bootState) { b.Held = 0 }) }

// UnmarkBad lets version v, which failed its boot tries, be installed
// again (an admin who fixed what broke its boot, say).
func (s *Sysroot) UnmarkBad(v uint64) error {
	if !s.IsBad(v) {
		return fmt.Errorf("unmark-bad: version %d is not marked bad", v)
	}
	return s.editBoot(func(b *bootState) { b.Bad = slices.DeleteFunc(b.Bad, func(x uint64) bool { return x == v }) })
}

// editBoot changes boot.json under the sysroot's lock.
func (s *Sysroot) editBoot(f func(*bootState)) error {
	unlock, err := s.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.editBootLocked(f)
}

func (s *Sysroot) editBootLocked(f func(*bootState)) error {
	b, err := s.readBoot()
	if err != nil {
		return err
	}
	f(&b)
	return s.writeBoot(b)
}

// startProbation puts a just-applied version on probation for tries boots.
func (s *Sysroot) startProbation(v uint64, tries int) error {
	b, err := s.readBoot()
	if err != nil {
		return err
	}
	if tries <= 0 {
		tries = DefaultBootTries
	}
	b.Trying, b.Left = v, tries
	return s.writeBoot(b)
}

// Probation is the version on probation (0: none) and the boots it may
// still start before it is given up, for status reports.
func (s *Sysroot) Probation() (version uint64, left int) {
	b, _ := s.readBoot()
	return b.Trying, b.Left
}

// MarkGood confirms that the current version boots: it leaves probation.
// booted is the version this boot started (BootedVersion), 0 if unknown: a
// boot of another version (a one-boot revert) proves nothing about current,
// which stays on probation.
func (s *Sysroot) MarkGood(booted uint64) (uint64, error) {
	st, err := s.Status()
	if err != nil {
		return 0, err
	}
	if booted != 0 && booted != st.Current {
		return booted, fmt.Errorf("%w: this boot started version %d, not current (%d), which stays on probation", ErrNotBooted, booted, st.Current)
	}
	b, err := s.readBoot()
	if err != nil {
		return 0, err
	}
	if b.Trying == st.Current {
		b.Trying, b.Left = 0, 0
		if err := s.writeBoot(b); err != nil {
			return 0, err
		}
	}
	return st.Current, nil
}

// RevertNextBoot asks the next boot to start the previous version.
func (s *Sysroot) RevertNextBoot() error {
	st, err := s.Status()
	if err != nil {
		return err
	}
	if st.Previous == 0 {
		return ErrNoPrevious
	}
	if IsRollback(st.Current, st.Previous) {
		return fmt.Errorf("%w: current is version %d (previous: %d)", ErrRolledBack, st.Current, st.Previous)
	}
	return fsutil.WriteAtomic(s.revertPath(), []byte("1\n"))
}

// BootChoice is what the boot step decided.
type BootChoice struct {
	Root    string // the tree to boot
	Version uint64
	Reason  string
}

// Boot runs once per boot, before the root is switched to: it picks the
// tree to start and does the bookkeeping of probation. cmdline is the kernel
// command line.
func (s *Sysroot) Boot(cmdline string) (BootChoice, error) {
	unlock, err := s.Lock()
	if err != nil {
		return BootChoice{}, err
	}
	defer unlock()
	if err := s.cleanup(); err != nil {
		return BootChoice{}, err
	}
	st, err := s.Status()
	if err != nil {
		return BootChoice{}, err
	}
	if st.Current == 0 {
		return BootChoice{}, errors.New("boot: no current version in this sysroot")
	}
	choose := func(v uint64, why string) BootChoice {
		return BootChoice{Root: s.TreePath(v), Version: v, Reason: why}
	}
	b, err := s.readBoot()
	if err != nil {
		return BootChoice{}, err
	}
	// A revert goes back to a version that booted well. After a fallback
	// previous is the version just marked bad; booting it would undo the
	// fallback, so a revert then keeps current.
	canRevert := st.Previous != 0 && !slices.Contains(b.Bad, st.Previous)
	revertWhy := func(asked string) string {
		if st.Previous == 0 {
			return asked + ", but there is no previous version: current"
		}
		return fmt.Sprintf("%s, but previous (version %d) is marked bad: current", asked, st.Previous)
	}
	// The kernel command line is set for one boot (a held key, a menu
	// entry): start previous without changing anything.
	if slices.Contains(strings.Fields(cmdline), "peerup.revert=1") {
		if canRevert {
			return choose(st.Previous, "peerup.revert=1 on the kernel command line"), nil
		}
		return choose(st.Current, revertWhy("peerup.revert=1 on the kernel command line")), nil
	}
	if _, err := os.Stat(s.revertPath()); err == nil {
		// The request is an admin's rollback, done at boot; like one, it
		// is idempotent: once current is the older version it is done.
		rolledBack := IsRollback(st.Current, st.Previous)
		canRevert := canRevert && !rolledBack
		revertWhy := revertWhy
		if rolledBack {
			revertWhy = func(asked string) string {
				return fmt.Sprintf("%s, but current (version %d) is already the older one: current", asked, st.Current)
			}
		}
		if canRevert {
			// Bookkeeping never stops a boot: without the hold, the
			// version left may come back, as before holds existed. It
			// is written first, as an admin's rollback does.
			_ = s.holdLeft(st.Current)
			if err := s.rollbackLocked(st); errors.Is(err, ErrNotSwitched) {
				// This boot starts previous all the same; the request
				// stays for the next boot to switch the links.
				return choose(st.Previous, fmt.Sprintf("rollback requested, for this boot only (%v); the next boot tries the switch again", err)), nil
			} else if err != nil && !errors.Is(err, ErrSwitchPending) {
				return BootChoice{}, err
			}
		}
		if err := os.Remove(s.revertPath()); err != nil {
			return BootChoice{}, fmt.Errorf("boot: %w", err)
		}
		if canRevert {
			return choose(st.Previous, "rollback requested for this boot"), nil
		}
		return choose(st.Current, revertWhy("rollback requested for this boot")), nil
	}
	if slices.Contains(b.Bad, st.Current) && canRevert {
		// A fallback whose switch failed (a full disk): try it again.
		return s.bootBack(st, fmt.Sprintf("version %d is marked bad: back to %d", st.Current, st.Previous))
	}
	if b.Trying != st.Current || b.Trying == 0 {
		return choose(st.Current, "current"), nil
	}
	if b.Left > 0 {
		b.Left--
		if err := s.writeBoot(b); err != nil {
			return BootChoice{}, err
		}
		return choose(st.Current, fmt.Sprintf("version %d on probation, %d tries left after this one", st.Current, b.Left)), nil
	}
	// Out of tries: the version never reached mark-good.
	bad := b.Trying
	b.Bad = append(b.Bad, bad)
	b.Trying, b.Left = 0, 0
	if err := s.writeBoot(b); err != nil {
		return BootChoice{}, err
	}
	if st.Previous == 0 {
		return choose(st.Current, fmt.Sprintf("version %d failed its tries but there is no previous", bad)), nil
	}
	return s.bootBack(st, fmt.Sprintf("version %d did not reach mark-good in its tries: marked bad, back to %d", bad, st.Previous))
}

// bootBack switches the links back to previous and boots it. A boot must
// start whatever the disk allows: where the links cannot be switched (a
// full disk) this boot starts previous all the same, and the next boot,
// finding current marked bad, tries the switch again.
func (s *Sysroot) bootBack(st Status, why string) (BootChoice, error) {
	c := BootChoice{Root: s.TreePath(st.Previous), Version: st.Previous, Reason: why}
	if err := s.rollbackLocked(st); errors.Is(err, ErrNotSwitched) {
		c.Reason += fmt.Sprintf(" for this boot only (%v); the next boot tries the switch again", err)
	} else if err != nil && !errors.Is(err, ErrSwitchPending) {
		return BootChoice{}, err
	}
	return c, nil
}
