package apply

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/diff"
	"github.com/peerup/peerup/internal/fsutil"
)

// Names inside a sysroot (SPEC.md §6).
const (
	LinkCurrent  = "current"
	LinkPrevious = "previous"
	LinkStaged   = "staged"
	treesDir     = "trees"
	stateDir     = "peerup"
	tmpPrefix    = ".tmp-"
)

// Errors a caller can test for with errors.Is.
var (
	ErrNothingStaged = errors.New("no staged version")
	ErrNoPrevious    = errors.New("no previous version to roll back to")
	ErrUpToDate      = errors.New("already up to date")
	ErrMarkedBad     = errors.New("marked bad: it failed to boot")
	ErrHeld          = errors.New("held back by an admin or a rollback")
	// ErrRolledBack: a rollback asked for where current is already the
	// older version (rollback --next-boot; Rollback itself says so in its
	// result instead).
	ErrRolledBack = errors.New("already rolled back")
	// ErrNotSwitched: a switch failed before its point of no return (the
	// journal); the links are as they were and no journal is left.
	ErrNotSwitched = errors.New("not switched")
	// ErrSwitchPending: a switch failed after its journal was written; the
	// journal stays, and the next peerup to take the sysroot lock (or the
	// boot step) finishes it. Status reports the state it will produce.
	ErrSwitchPending = errors.New("switch pending")
)

// Sysroot is a directory holding image trees and the links between them.
type Sysroot struct {
	dir  string
	repo *blobstore.Repo
	// BootTries is how many boots a newly applied version gets to reach
	// mark-good (default DefaultBootTries).
	BootTries int
	// Fault, if set, is called before every change to the disk with a name
	// for it. The crash-injection tests end the process there; production
	// leaves it nil.
	Fault func(point string)
	// MachineIDFile holds the machine's id, which places it in phased
	// rollouts (default DefaultMachineIDFile).
	MachineIDFile string

	shareMu sync.Mutex
	share   *sharing // the pull in progress, lent to neighbours

	// dec is the running pull's decoder (its pool of zstd decoders), set
	// by Pull under the sysroot lock before any fetch starts.
	dec *diff.Decoder

	previewed previewed // the last Preview's metadata, for the pull after it
}

func (s *Sysroot) at(point string) {
	if s.Fault != nil {
		s.Fault(point)
	}
}

// RepoDir is where the sysroot at dir keeps its node's repo, for readers
// that must not create a sysroot where there is none.
func RepoDir(dir string) string { return filepath.Join(dir, stateDir, "repo") }

// CheckSysroot reports whether dir holds a sysroot (its node's repo), for
// the verbs that only look at or tend one: they must not make a sysroot
// where an admin mistyped its path, nor report a mistyped path as fine.
func CheckSysroot(dir string) error {
	if blobstore.CheckRepo(RepoDir(dir)) != nil {
		return fmt.Errorf("%s is not a peerup sysroot (it has no %s/repo; update or pull makes one)", dir, stateDir)
	}
	return nil
}

// OpenExisting opens the sysroot at dir, refusing a dir that holds none
// (CheckSysroot).
func OpenExisting(dir string) (*Sysroot, error) {
	if err := CheckSysroot(dir); err != nil {
		return nil, err
	}
	return Open(dir)
}

// Open opens (creating if needed) the sysroot at dir.
func Open(dir string) (*Sysroot, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := fsutil.CheckPrivatePath(abs); err != nil {
		return nil, fmt.Errorf("open sysroot: %w", err)
	}
	// Only root reaches the trees: a setuid program in previous or staged,
	// or a file a later version fixed, must not be runnable by a local user
	// through the sysroot's path. (The booted tree is the root overlay's
	// lower layer and needs no path.) An older sysroot's 0755 is tightened.
	trees := filepath.Join(abs, treesDir)
	if err := os.MkdirAll(trees, 0o700); err != nil {
		return nil, fmt.Errorf("open sysroot: %w", err)
	}
	// Only if needed, and not where trees/ is read-only to this process
	// (peerup-mark-good.service may write /sysroot/peerup alone): the next
	// writer tightens it.
	if fi, err := os.Stat(trees); err == nil && fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(trees, 0o700); err != nil && !errors.Is(err, unix.EROFS) && !errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("open sysroot: %w", err)
		}
	}
	repo, err := blobstore.OpenRepo(RepoDir(abs))
	if err != nil {
		return nil, fmt.Errorf("open sysroot: %w", err)
	}
	return &Sysroot{dir: abs, repo: repo}, nil
}

// Dir is the sysroot's path.
func (s *Sysroot) Dir() string { return s.dir }

// Repo is the node's own repo: what it holds and serves to its neighbours.
func (s *Sysroot) Repo() *blobstore.Repo { return s.repo }

// LocalDir holds the node's own versions of image files, at the same paths
// (local/etc/hostname replaces etc/hostname): every tree built on this node
// gets them instead of the image's, so local settings survive updates.
func (s *Sysroot) LocalDir() string { return filepath.Join(s.dir, "local") }

// StateDir is where the node keeps its own state (store, daemon database).
func (s *Sysroot) StateDir() string { return filepath.Join(s.dir, stateDir) }

// Lock takes the sysroot's exclusive lock, failing at once if another peerup
// process holds it.
func (s *Sysroot) Lock() (func(), error) {
	unlock, err := fsutil.LockFile(filepath.Join(s.dir, stateDir, "lock"))
	if err != nil {
		return nil, fmt.Errorf("sysroot %w", err)
	}
	return unlock, nil
}

// TreePath is where version v's tree lives.
func (s *Sysroot) TreePath(v uint64) string {
	return filepath.Join(s.dir, treesDir, strconv.FormatUint(v, 10))
}

// Status says which versions the links point at; 0 means no link.
type Status struct {
	Image    string
	Current  uint64
	Previous uint64
	Staged   uint64
	// Held: versions up to it are not installed (0: none); Bad: versions
	// that failed their boot tries (SPEC.md §12).
	Held uint64
	Bad  []uint64
	// Pending is a switch the journal records that has not finished (a
	// peerup interrupted or failed between its renames): Current and
	// Previous above are already what it will make them. nil: none.
	Pending *PendingSwitch
}

// IsRollback reports whether a link pair is one a rollback (or a boot's
// fallback or revert) made: versions only rise but by those, so current
// below previous is one.
func IsRollback(current, previous uint64) bool { return previous != 0 && current < previous }

// PendingSwitch is a link switch begun and not yet finished.
type PendingSwitch struct {
	Current  uint64 // what current will name
	Previous uint64 // what previous will name (0: left as it is)
	// Rollback: the switch goes back to an older version (a rollback, or
	// the boot step's fallback or revert), not forward to a newer one.
	Rollback bool
}

// readLink returns the version a link names, or 0 if there is no link.
func (s *Sysroot) readLink(name string) (uint64, error) {
	t, err := os.Readlink(filepath.Join(s.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s link: %w", name, err)
	}
	rest, ok := strings.CutPrefix(t, treesDir+"/")
	v, err := strconv.ParseUint(rest, 10, 64)
	if !ok || err != nil || v == 0 {
		return 0, fmt.Errorf("%s link points at %q, not %s/<version>", name, t, treesDir)
	}
	return v, nil
}

// Status is the sysroot's state as every caller reports it (status,
// apply, rollback, boot, the daemon): the links, overlaid with what a
// pending switch journal will make them (SPEC.md §7), so that nothing
// reports, or decides from, a state the next peerup undoes.
func (s *Sysroot) Status() (Status, error) {
	st, err := s.linkStatus()
	if err != nil {
		return st, err
	}
	j, err := s.readJournal()
	if err != nil {
		return st, err
	}
	if j != nil {
		st.Pending = &PendingSwitch{Current: j.cur, Previous: j.prev, Rollback: IsRollback(j.cur, j.prev)}
		st.Current = j.cur
		if j.prev != 0 {
			st.Previous = j.prev
		}
	}
	if st.Staged != 0 && st.Staged <= st.Current {
		// A crash after a switch but before the staged link was removed.
		st.Staged = 0
	}
	b, _ := s.readBoot()
	st.Held, st.Bad = b.Held, b.Bad
	st.Image, err = s.image()
	return st, err
}

// linkStatus reads the links alone, as they are on disk.
func (s *Sysroot) linkStatus() (Status, error) {
	var st Status
	var err error
	if st.Current, err = s.readLink(LinkCurrent); err != nil {
		return st, err
	}
	if st.Previous, err = s.readLink(LinkPrevious); err != nil {
		return st, err
	}
	if st.Staged, err = s.readLink(LinkStaged); err != nil {
		return st, err
	}
	return st, nil
}

// image is the image the node tracks: the one its repo holds versions of.
func (s *Sysroot) image() (string, error) {
	ix, err := s.repo.ReadIndex()
	if err != nil {
		return "", err
	}
	imgs := ix.Images()
	switch len(imgs) {
	case 0:
		return "", nil
	case 1:
		return imgs[0], nil
	}
	return "", fmt.Errorf("sysroot %s holds several images (%s); one sysroot tracks one image", s.dir, strings.Join(imgs, ", "))
}

// setLink points name at version v's tree, atomically: a new symlink under a
// temporary name renamed over the old one.
func (s *Sysroot) setLink(name string, v uint64) error {
	if err := s.makeLinkTemp(name, v); err != nil {
		return err
	}
	return s.renameLinkTemp(name)
}

func (s *Sysroot) linkTemp(name string) string { return filepath.Join(s.dir, "."+name+".tmp") }

func linkTarget(v uint64) string { return treesDir + "/" + strconv.FormatUint(v, 10) }

// makeLinkTemp makes the symlink that will become name, pointing at v's
// tree. One already there that points there is kept: a switch makes its
// temporaries before its journal, so finishing the switch after a crash
// needs no new inode on a full disk.
func (s *Sysroot) makeLinkTemp(name string, v uint64) error {
	tmp := s.linkTemp(name)
	if t, err := os.Readlink(tmp); err == nil && t == linkTarget(v) {
		return nil
	}
	s.at("set " + name)
	os.Remove(tmp)
	if err := os.Symlink(linkTarget(v), tmp); err != nil {
		return fmt.Errorf("set %s link: %w", name, err)
	}
	return nil
}

func (s *Sysroot) renameLinkTemp(name string) error {
	s.at("rename " + name)
	if err := os.Rename(s.linkTemp(name), filepath.Join(s.dir, name)); err != nil {
		return fmt.Errorf("set %s link: %w", name, err)
	}
	return nil
}

func (s *Sysroot) removeLink(name string) error {
	s.at("remove " + name)
	err := os.Remove(filepath.Join(s.dir, name))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s link: %w", name, err)
	}
	return nil
}

// cleanup removes what an interrupted peerup left: half-built trees and link
// temporaries. Staged objects stay for the next pull to salvage. The caller
// holds the lock.
func (s *Sysroot) cleanup() error {
	// An interrupted switch is finished first: pruning before it would
	// remove a tree it still names.
	if err := s.replayJournal(); err != nil {
		return err
	}
	if err := s.pruneTrees(); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(s.dir, treesDir))
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := removeTree(filepath.Join(s.dir, treesDir, e.Name())); err != nil {
				return fmt.Errorf("cleanup: %w", err)
			}
		}
	}
	for _, n := range []string{LinkCurrent, LinkPrevious, LinkStaged} {
		os.Remove(s.linkTemp(n))
	}
	cur, err := s.readLink(LinkCurrent)
	if err != nil {
		return err
	}
	if staged, err := s.readLink(LinkStaged); err == nil && staged != 0 && staged <= cur {
		// A crash between switching current and removing staged.
		if err := s.removeLink(LinkStaged); err != nil {
			return err
		}
	}
	return nil
}

// removeTree deletes a built tree, first making its directories writable
// (a tree may hold 0555 directories).
func removeTree(dir string) error {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

// Recover finishes or clears what an interrupted peerup left (a link switch
// half done, half-built trees); a daemon calls it when it starts.
func (s *Sysroot) Recover() error {
	unlock, err := s.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.cleanup()
}

// Prune removes the trees that no link names any more (the one an apply
// pushed out of previous). Their files stay in the store until gc. It is
// kept out of Apply so that a switch is as quick as renaming two links;
// Switch runs it after one.
func (s *Sysroot) Prune() error {
	unlock, err := s.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.pruneTrees()
}

func (s *Sysroot) pruneTrees() error {
	st, err := s.Status()
	if err != nil {
		return err
	}
	// The links as they are and as a pending journal makes them: Prune
	// does not finish a journal, and no tree either names is pruned.
	raw, err := s.linkStatus()
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, v := range []uint64{st.Current, st.Previous, st.Staged, raw.Current, raw.Previous, raw.Staged} {
		if v != 0 {
			keep[strconv.FormatUint(v, 10)] = true
		}
	}
	ents, err := os.ReadDir(filepath.Join(s.dir, treesDir))
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !keep[e.Name()] && !strings.HasPrefix(e.Name(), tmpPrefix) {
			s.at("prune tree " + e.Name())
			if err := removeTree(filepath.Join(s.dir, treesDir, e.Name())); err != nil {
				return fmt.Errorf("remove old tree %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// Apply switches current to the staged tree and keeps the old current as
// previous. If want is not 0 the staged version must be want. A failed
// Apply's error wraps ErrNotSwitched (the links are as they were) or
// ErrSwitchPending (the journal finishes the switch later), and says which
// version is, or will be, current.
func (s *Sysroot) Apply(want uint64) (from, to uint64, err error) {
	unlock, err := s.Lock()
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	if err := s.cleanup(); err != nil {
		return 0, 0, fmt.Errorf("apply: %w", err)
	}
	st, err := s.Status()
	if err != nil {
		return 0, 0, err
	}
	if st.Staged == 0 {
		return 0, 0, fmt.Errorf("apply: %w (run peerup pull first)", ErrNothingStaged)
	}
	if want != 0 && st.Staged != want {
		return 0, 0, fmt.Errorf("apply: version %d is not staged (staged: %d)", want, st.Staged)
	}
	// Probation is written before the switch: were it after, a crash in
	// between would leave the new version current but never counted. Set
	// early, it names a version that is not current yet, which the boot
	// step ignores.
	s.at("probation")
	if err := s.startProbation(st.Staged, s.BootTries); err != nil {
		return 0, 0, fmt.Errorf("apply: %w", s.notSwitched(st, err))
	}
	if err := s.switchLinks(st.Staged, st.Current, st); err != nil {
		return 0, 0, fmt.Errorf("apply: %w", err)
	}
	// A staged link left at or below current is ignored and removed by the
	// next peerup, so a failure here changes nothing that matters.
	if err := s.removeLink(LinkStaged); err != nil {
		return 0, 0, fmt.Errorf("apply: switched to version %d, but %w", st.Staged, err)
	}
	// Keys the new version introduces or revokes take effect now; every
	// pull does this again first, so a crash here loses nothing.
	if err := s.adoptKeys(Status{Image: st.Image, Current: st.Staged}); err != nil {
		return 0, 0, fmt.Errorf("apply: switched to version %d, but its keys: %w", st.Staged, err)
	}
	// The new version must prove it boots; until then the boot step counts
	// its tries (boot.go).
	return st.Current, st.Staged, nil
}

// RollbackResult says what a rollback did.
type RollbackResult struct {
	// From is the version left (now previous, and held), To the version
	// now current.
	From, To uint64
	// Finished: a switch back that an interrupted peerup began was
	// finished, and that was the rollback.
	Finished bool
	// Already: current was already the older of the two (a rollback or a
	// boot's fallback went there), so nothing was switched.
	Already bool
}

// Rollback makes previous current again, the explicit exception to the
// rule that versions only rise. It is idempotent: once current is the
// older version, asking again changes nothing (RollbackDetail says so).
func (s *Sysroot) Rollback() (from, to uint64, err error) {
	r, err := s.RollbackDetail()
	return r.From, r.To, err
}

// RollbackDetail is Rollback, saying whether it switched, finished an
// interrupted rollback, or found one already done.
func (s *Sysroot) RollbackDetail() (RollbackResult, error) {
	unlock, err := s.Lock()
	if err != nil {
		return RollbackResult{}, err
	}
	defer unlock()
	before, err := s.Status()
	if err != nil {
		return RollbackResult{}, err
	}
	if err := s.replayJournal(); err != nil {
		return RollbackResult{}, fmt.Errorf("rollback: %w", err)
	}
	st, err := s.Status()
	if err != nil {
		return RollbackResult{}, err
	}
	if IsRollback(st.Current, st.Previous) {
		// Swapping again would undo what was asked for, as a second
		// rollback once did.
		return RollbackResult{From: st.Previous, To: st.Current, Already: true,
			Finished: before.Pending != nil && before.Pending.Rollback}, nil
	}
	if st.Previous == 0 || st.Previous == st.Current {
		return RollbackResult{}, fmt.Errorf("rollback: %w", ErrNoPrevious)
	}
	// The hold is written before the switch, so that a full disk stops the
	// rollback rather than leaving it done without its hold. Until the
	// switch it holds current, which the version rule keeps out anyway.
	s.at("hold")
	if err := s.holdLeft(st.Current); err != nil {
		return RollbackResult{}, fmt.Errorf("rollback: %w", s.notSwitched(st, err))
	}
	if err := s.rollbackLocked(st); err != nil {
		return RollbackResult{}, err
	}
	return RollbackResult{From: st.Current, To: st.Previous}, nil
}

// rollbackLocked swaps current and previous.
func (s *Sysroot) rollbackLocked(st Status) error {
	if st.Previous == 0 || st.Previous == st.Current {
		return fmt.Errorf("rollback: %w", ErrNoPrevious)
	}
	if _, err := os.Stat(s.TreePath(st.Previous)); err != nil {
		return fmt.Errorf("rollback: %w", s.notSwitched(st, fmt.Errorf("previous tree: %w", err)))
	}
	if err := s.switchLinks(st.Previous, st.Current, st); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// holdLeft holds the version an admin's rollback leaves, or a daemon with
// the auto policy would install it again at once; a newer one still comes.
// (A boot's fallback needs no hold: it marks the version bad.)
func (s *Sysroot) holdLeft(from uint64) error {
	if err := s.editBootLocked(func(b *bootState) { b.Held = max(b.Held, from) }); err != nil {
		return fmt.Errorf("holding version %d: %w", from, err)
	}
	return nil
}

func (s *Sysroot) journalPath() string { return filepath.Join(s.StateDir(), "switch") }

// journal is a link pair a switch is making (SYSROOT/peerup/switch).
type journal struct{ cur, prev uint64 }

// readJournal returns the switch the journal will finish, or nil if there
// is none to finish: no journal, a torn one, or one naming a tree that does
// not exist (the switch had not begun). This is the one rule for what a
// journal means; Status reports it and replayJournal carries it out.
func (s *Sysroot) readJournal() (*journal, error) {
	b, err := os.ReadFile(s.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("switch journal: %w", err)
	}
	var j journal
	if _, err := fmt.Sscanf(string(b), "%d %d", &j.cur, &j.prev); err != nil || j.cur == 0 {
		return nil, nil
	}
	if _, err := os.Stat(s.TreePath(j.cur)); err != nil {
		return nil, nil
	}
	return &j, nil
}

// switchLinks points current at cur and previous at prev (0: previous is
// left alone); before is the state it starts from, for its errors. Two
// renames cannot be one atomic step, so the pair is written to a journal
// first, and a crash between the renames is finished from the journal by
// the next peerup to take the lock (or the boot step).
//
// The journal is the point of no return, and everything that takes space
// comes before it: the link temporaries, then the journal itself. A failure
// up to there (a full disk) leaves the links as they were and no journal
// (ErrNotSwitched); after it only renames remain, which need no space, and
// one that fails leaves the journal to finish the switch (ErrSwitchPending).
func (s *Sysroot) switchLinks(cur, prev uint64, before Status) error {
	err := s.makeLinkTemp(LinkCurrent, cur)
	if err == nil && prev != 0 {
		err = s.makeLinkTemp(LinkPrevious, prev)
	}
	if err == nil {
		s.at("write switch journal")
		if err = fsutil.WriteAtomic(s.journalPath(), fmt.Appendf(nil, "%d %d\n", cur, prev)); err != nil {
			// Renamed in but not made durable: it means nothing yet.
			os.Remove(s.journalPath())
			err = fmt.Errorf("write switch journal: %w", err)
		}
	}
	if err != nil {
		os.Remove(s.linkTemp(LinkCurrent))
		os.Remove(s.linkTemp(LinkPrevious))
		return s.notSwitched(before, err)
	}
	if err := s.finishSwitch(cur, prev); err != nil {
		return pendingErr(cur, prev, err)
	}
	return nil
}

// notSwitched is the error of a switch that did not happen: the laptop is
// as st says.
func (s *Sysroot) notSwitched(st Status, err error) error {
	staged := ""
	if st.Staged != 0 {
		staged = fmt.Sprintf(", version %d staged", st.Staged)
	}
	return fmt.Errorf("%w: current is still %s%s: %w", ErrNotSwitched, describeLinks(st.Current, st.Previous), staged, err)
}

// pendingErr is the error of a switch whose journal stays to finish it.
func pendingErr(cur, prev uint64, err error) error {
	return fmt.Errorf("%w: current will be %s once the next peerup command or boot finishes it: %w",
		ErrSwitchPending, describeLinks(cur, prev), err)
}

// describeLinks names a link pair for messages.
func describeLinks(cur, prev uint64) string {
	if prev == 0 {
		return fmt.Sprintf("version %d", cur)
	}
	return fmt.Sprintf("version %d (previous: %d)", cur, prev)
}

// finishSwitch does a journal's renames, current first so that the chosen
// version takes effect even if power fails before previous is updated. A
// link that already names its version is left alone, so a replay after a
// crash between the renames makes nothing new.
func (s *Sysroot) finishSwitch(cur, prev uint64) error {
	for _, l := range []struct {
		name string
		v    uint64
	}{{LinkCurrent, cur}, {LinkPrevious, prev}} {
		if l.v == 0 {
			continue
		}
		if t, err := os.Readlink(filepath.Join(s.dir, l.name)); err == nil && t == linkTarget(l.v) {
			os.Remove(s.linkTemp(l.name)) // made for nothing: the link was right already
			continue
		}
		if err := s.setLink(l.name, l.v); err != nil {
			return err
		}
	}
	if err := fsutil.FsyncDir(s.dir); err != nil {
		return err
	}
	s.at("remove switch journal")
	if err := os.Remove(s.journalPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove switch journal: %w", err)
	}
	return nil
}

// replayJournal finishes a switch a crash (or a failed rename) left, or
// removes a journal that means none.
func (s *Sysroot) replayJournal() error {
	j, err := s.readJournal()
	if err != nil {
		return err
	}
	if j == nil {
		if err := os.Remove(s.journalPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("switch journal: %w", err)
		}
		return nil
	}
	if err := s.finishSwitch(j.cur, j.prev); err != nil {
		return fmt.Errorf("finish the interrupted switch: %w", pendingErr(j.cur, j.prev, err))
	}
	return nil
}
