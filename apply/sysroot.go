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

// Status reads the links.
func (s *Sysroot) Status() (Status, error) {
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
	if st.Staged != 0 && st.Staged <= st.Current {
		// A crash after a switch but before the staged link was removed.
		st.Staged = 0
	}
	b, _ := s.readBoot()
	st.Held, st.Bad = b.Held, b.Bad
	st.Image, err = s.image()
	return st, err
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
	s.at("set " + name)
	tmp := filepath.Join(s.dir, "."+name+".tmp")
	os.Remove(tmp)
	if err := os.Symlink(treesDir+"/"+strconv.FormatUint(v, 10), tmp); err != nil {
		return fmt.Errorf("set %s link: %w", name, err)
	}
	s.at("rename " + name)
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		os.Remove(tmp)
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
		os.Remove(filepath.Join(s.dir, "."+n+".tmp"))
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
	keep := map[string]bool{}
	for _, v := range []uint64{st.Current, st.Previous, st.Staged} {
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
// previous. If want is not 0 the staged version must be want.
func (s *Sysroot) Apply(want uint64) (from, to uint64, err error) {
	unlock, err := s.Lock()
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	if err := s.cleanup(); err != nil {
		return 0, 0, err
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
		return 0, 0, err
	}
	if err := s.switchLinks(st.Staged, st.Current); err != nil {
		return 0, 0, err
	}
	if err := s.removeLink(LinkStaged); err != nil {
		return 0, 0, err
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

// Rollback swaps current and previous: the explicit exception to the rule
// that versions only rise.
func (s *Sysroot) Rollback() (from, to uint64, err error) {
	unlock, err := s.Lock()
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	if err := s.replayJournal(); err != nil {
		return 0, 0, err
	}
	st, err := s.Status()
	if err != nil {
		return 0, 0, err
	}
	if from, to, err = s.rollbackLocked(st); err != nil {
		return 0, 0, err
	}
	return from, to, s.holdLeft(from)
}

func (s *Sysroot) rollbackLocked(st Status) (from, to uint64, err error) {
	if st.Previous == 0 || st.Previous == st.Current {
		return 0, 0, fmt.Errorf("rollback: %w", ErrNoPrevious)
	}
	if _, err := os.Stat(s.TreePath(st.Previous)); err != nil {
		return 0, 0, fmt.Errorf("rollback: previous tree: %w", err)
	}
	if err := s.switchLinks(st.Previous, st.Current); err != nil {
		return 0, 0, err
	}
	return st.Current, st.Previous, nil
}

// holdLeft holds the version an admin's rollback left, or a daemon with
// the auto policy would install it again at once; a newer one still comes.
// (A boot's fallback needs no hold: it marks the version bad.)
func (s *Sysroot) holdLeft(from uint64) error {
	if err := s.editBootLocked(func(b *bootState) { b.Held = max(b.Held, from) }); err != nil {
		return fmt.Errorf("rollback: done, but holding version %d: %w", from, err)
	}
	return nil
}

func (s *Sysroot) journalPath() string { return filepath.Join(s.StateDir(), "switch") }

// switchLinks points current at cur and previous at prev. Two renames
// cannot be one atomic step, so the pair is written to a journal first; a
// crash between the renames is finished from the journal by the next
// peerup to take the lock (or the boot step), and no tree is orphaned.
func (s *Sysroot) switchLinks(cur, prev uint64) error {
	s.at("write switch journal")
	if err := fsutil.WriteAtomic(s.journalPath(), fmt.Appendf(nil, "%d %d\n", cur, prev)); err != nil {
		return fmt.Errorf("switch: %w", err)
	}
	return s.finishSwitch(cur, prev)
}

func (s *Sysroot) finishSwitch(cur, prev uint64) error {
	// current first, so the chosen version takes effect even if power fails
	// before previous is updated.
	if err := s.setLink(LinkCurrent, cur); err != nil {
		return err
	}
	if prev != 0 {
		if err := s.setLink(LinkPrevious, prev); err != nil {
			return err
		}
	}
	if err := fsutil.FsyncDir(s.dir); err != nil {
		return err
	}
	s.at("remove switch journal")
	if err := os.Remove(s.journalPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("switch: %w", err)
	}
	return nil
}

// replayJournal finishes a switch a crash interrupted.
func (s *Sysroot) replayJournal() error {
	b, err := os.ReadFile(s.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("switch journal: %w", err)
	}
	var cur, prev uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &cur, &prev); err != nil || cur == 0 {
		// A torn journal: the switch had not begun, so nothing to finish.
		return os.Remove(s.journalPath())
	}
	if _, err := os.Stat(s.TreePath(cur)); err != nil {
		return os.Remove(s.journalPath())
	}
	return s.finishSwitch(cur, prev)
}
