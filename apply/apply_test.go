package apply_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/blobstore"
	"github.com/peerup/peerup/internal/fsutil"
	"github.com/peerup/peerup/manifest"
	"github.com/peerup/peerup/transfer"
)

// fleet is a publisher with a key and a repo served over HTTP on loopback.
type fleet struct {
	t      *testing.T
	repo   *blobstore.Repo
	signer *manifest.Signer
	trust  *manifest.Keyring
	pub    string // the fleet's public key file
	url    string
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	dir := t.TempDir()
	e, err := manifest.GenerateKey("fleet")
	if err != nil {
		t.Fatal(err)
	}
	_, pub, err := manifest.WriteKeyPair(e, dir, "fleet")
	if err != nil {
		t.Fatal(err)
	}
	kr, err := manifest.LoadKeyring(pub)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := blobstore.OpenRepo(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(transfer.NewHandler(repo.Dir(), nil))
	t.Cleanup(srv.Close)
	return &fleet{t: t, repo: repo, signer: manifest.NewSigner(e), trust: kr, pub: pub, url: srv.URL}
}

func (f *fleet) publish(tree string, v uint64) {
	f.t.Helper()
	_, err := f.repo.Publish(context.Background(), tree, blobstore.PublishOptions{
		Image: "school-laptop", Version: v, Signer: f.signer, Label: fmt.Sprintf("v%d", v), AllowSame: true})
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fleet) client() apply.Source {
	c, err := transfer.NewClient(f.url, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func (f *fleet) pull(s *apply.Sysroot, v uint64) (*apply.PullResult, error) {
	return s.Pull(context.Background(), f.client(), apply.PullOptions{Version: v, Trust: f.trust})
}

func (f *fleet) update(s *apply.Sysroot, v uint64) {
	f.t.Helper()
	if _, err := f.pull(s, v); err != nil {
		f.t.Fatalf("pull v%d: %v", v, err)
	}
	if _, _, err := s.Apply(v); err != nil {
		f.t.Fatalf("apply v%d: %v", v, err)
	}
}

func newSysroot(t *testing.T) *apply.Sysroot {
	t.Helper()
	s, err := apply.Open(filepath.Join(t.TempDir(), "sysroot"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // WriteFile's mode passes through umask
		t.Fatal(err)
	}
}

// makeTree builds a source tree with every entry type the manifest knows.
func makeTree(t *testing.T, osRelease string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	root0 := os.Getuid() == 0
	write(t, root+"/etc/os-release", osRelease, 0o644)
	write(t, root+"/etc/shadow", "root:*:1::::::\n", 0o640)
	write(t, root+"/usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755)
	write(t, root+"/usr/bin/su", "setuid binary bytes", 0o755)
	unix.Chmod(root+"/usr/bin/su", 0o4755) // os.Chmod spells setuid differently
	write(t, root+"/usr/bin/wall", "setgid binary bytes", 0o755)
	unix.Chmod(root+"/usr/bin/wall", 0o2755)
	write(t, root+"/usr/share/same-a", "same bytes", 0o644)
	write(t, root+"/usr/share/same-b", "same bytes", 0o600) // same bytes, other mode
	write(t, root+"/var/empty-file", "", 0o644)
	write(t, root+"/usr/lib/big.so", strings.Repeat("library code\n", 50000), 0o755)
	os.MkdirAll(root+"/var/empty-dir", 0o755)
	os.MkdirAll(root+"/tmp", 0o755)
	unix.Chmod(root+"/tmp", 0o1777)
	os.Symlink("usr/bin", root+"/bin")                // relative
	os.Symlink("/usr/share/same-a", root+"/abs-link") // absolute
	os.Symlink("does/not/exist", root+"/dangling")    // dangling
	if err := unix.Mkfifo(root+"/var/fifo", 0o620); err != nil {
		t.Fatal(err)
	}
	os.Chmod(root+"/var/fifo", 0o620)
	unix.Setxattr(root+"/usr/bin/tool", "user.peerup-test", []byte("xattr value"), 0) // where supported
	if root0 {
		if err := unix.Mknod(root+"/dev-null", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(root+"/dev-loop9", unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))); err != nil {
			t.Fatal(err)
		}
		os.Chmod(root+"/dev-null", 0o666)
		os.Chmod(root+"/dev-loop9", 0o660)
		write(t, root+"/home/pupil/notes", "owned by another user", 0o600)
		os.Lchown(root+"/home/pupil/notes", 1234, 5678)
		os.Lchown(root+"/home/pupil", 1234, 5678)
		os.Lchown(root+"/dangling", 1234, 5678)
	}
	return root
}

// describe lists everything a user would compare between two trees: type,
// mode, owner, size, content hash, symlink target, device number, xattrs.
func describe(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		d := fmt.Sprintf("mode=%o uid=%d gid=%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, _ := os.ReadFile(p)
			d += fmt.Sprintf(" size=%d sha=%x", len(b), sha256.Sum256(b))
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			d += " target=" + target
		case unix.S_IFCHR, unix.S_IFBLK:
			d += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if x, _ := manifest.ReadXattrs(p); len(x) > 0 {
			d += fmt.Sprintf(" xattrs=%q", x)
		}
		out[rel] = d
		return nil
	})
	return out
}

func compareTrees(t *testing.T, want, got string) {
	t.Helper()
	w, g := describe(t, want), describe(t, got)
	var keys []string
	for k := range w {
		keys = append(keys, k)
	}
	for k := range g {
		if _, ok := w[k]; !ok && !(slices.Contains(apply.MountPoints(), k) && strings.HasPrefix(g[k], "mode=40755 ")) {
			// The builder adds the boot's mount points an image lacks.
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if w[k] != g[k] {
			t.Errorf("%s:\n  source: %s\n  built:  %s", k, w[k], g[k])
		}
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestRoundTripEveryEntryType(t *testing.T) {
	if os.Getuid() != 0 {
		t.Log("not root: device nodes and foreign owners are left out of this run")
	}
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	current := filepath.Join(s.Dir(), "current")
	compareTrees(t, tree, current+"/")
	for path, mode := range map[string]uint32{"usr/bin/su": 0o4755, "usr/bin/wall": 0o2755, "tmp": 0o1777} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(current, path), &st); err != nil || st.Mode&0o7777 != mode {
			t.Errorf("%s: mode %o, want %o (%v)", path, st.Mode&0o7777, mode, err)
		}
	}
	a, b := inode(t, current+"/usr/share/same-a"), inode(t, current+"/usr/share/same-b")
	if a == b {
		t.Error("same bytes with different modes share an inode in the built tree")
	}
}

// TestUpdateKeepsPreviousAndRollsBack: a rollback makes previous current;
// asking again changes nothing and says so (SPEC.md §7: rollback is
// idempotent), and the version left comes back by an update, which reuses
// its kept tree.
func TestUpdateKeepsPreviousAndRollsBack(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	f.publish(tree, 2)
	res, err := f.pull(s, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 2 || res.FetchedObjects != 1 {
		t.Errorf("pull of v2 fetched %d objects, want only the changed file's 1", res.FetchedObjects)
	}
	if _, _, err := s.Apply(0); err != nil {
		t.Fatal(err)
	}
	check := func(cur, prev uint64) {
		t.Helper()
		st, err := s.Status()
		if err != nil {
			t.Fatal(err)
		}
		if st.Current != cur || st.Previous != prev || st.Staged != 0 || st.Image != "school-laptop" {
			t.Fatalf("status = %+v, want current %d previous %d", st, cur, prev)
		}
		got, _ := os.ReadFile(filepath.Join(s.Dir(), "current/etc/os-release"))
		if want := fmt.Sprintf("VERSION=%d\n", cur); string(got) != want {
			t.Fatalf("current/etc/os-release = %q, want %q", got, want)
		}
	}
	check(2, 1)
	if inode(t, s.TreePath(1)+"/usr/lib/big.so") != inode(t, s.TreePath(2)+"/usr/lib/big.so") {
		t.Error("a file unchanged between versions is two inodes")
	}
	compareTrees(t, tree, filepath.Join(s.Dir(), "current")+"/")
	if _, _, err := s.Rollback(); err != nil {
		t.Fatal(err)
	}
	check(1, 2)
	r, err := s.RollbackDetail()
	if err != nil || !r.Already || r.Finished || r.From != 2 || r.To != 1 {
		t.Fatalf("second rollback: %+v, %v; want nothing switched, said so", r, err)
	}
	check(1, 2)
	if err := s.Unhold(); err != nil {
		t.Fatal(err)
	}
	res, err = f.pull(s, 2)
	if err != nil || !res.AlreadyStaged && res.FetchedObjects != 0 {
		t.Fatalf("pull of the version rolled back from: %+v, %v", res, err)
	}
	if _, _, err := s.Apply(2); err != nil {
		t.Fatal(err)
	}
	check(2, 1)
}

// snapshot records everything a failed operation must leave untouched.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if fi.Name() == "staging" {
			return filepath.SkipDir // scratch space: its mtime moves, its contents are checked elsewhere
		}
		st := fi.Sys().(*syscall.Stat_t)
		mtime := st.Mtim.Nano()
		if p == filepath.Join(dir, "trees") {
			// A pull builds its tree there while it fetches, and a failed
			// one removes it: trees/'s own mtime moves, what it holds is
			// compared below.
			mtime = 0
		}
		fmt.Fprintf(&b, "%s ino=%d mode=%o size=%d mtime=%d", p, st.Ino, st.Mode, st.Size, mtime)
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			b.WriteString(" -> " + target)
		} else if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		b.WriteByte('\n')
		return nil
	})
	return b.String()
}

func TestRefusedUpdatesChangeNothing(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	f.publish(tree, 2)
	write(t, tree+"/etc/os-release", "VERSION=3\n", 0o644)
	f.publish(tree, 3)

	other, err := manifest.GenerateKey("intruder")
	if err != nil {
		t.Fatal(err)
	}
	m3 := f.repo.Layout().Manifest("school-laptop", 3)
	m1 := f.repo.Layout().Manifest("school-laptop", 1)
	good3, _ := os.ReadFile(m3)
	goodSig3, _ := os.ReadFile(m3 + ".sig")
	good1, _ := os.ReadFile(m1)
	goodSig1, _ := os.ReadFile(m1 + ".sig")
	restore := func() {
		os.WriteFile(m3, good3, 0o644)
		os.WriteFile(m3+".sig", goodSig3, 0o644)
	}

	tests := []struct {
		name    string
		tamper  func()
		version uint64
		want    error  // errors.Is target, or nil to match text only
		text    string // must appear in the error
	}{
		{"untrusted key", func() {
			var sig bytes.Buffer
			manifest.NewSigner(other).Sign(&sig, bytes.NewReader(good3))
			os.WriteFile(m3+".sig", sig.Bytes(), 0o644)
		}, 3, manifest.ErrUntrustedKey, "not trusted"},
		{"edited manifest", func() {
			os.WriteFile(m3, bytes.Replace(good3, []byte("label v3"), []byte("label v4"), 1), 0o644)
		}, 3, manifest.ErrBadSignature, "bad signature"},
		{"older version asked for", func() {}, 1, apply.ErrNotNewer, "not newer"},
		{"old manifest replayed as new", func() {
			os.WriteFile(m3, good1, 0o644)
			os.WriteFile(m3+".sig", goodSig1, 0o644)
		}, 3, nil, "signed as school-laptop v1"},
	}
	s := newSysroot(t)
	f.update(s, 2)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer restore()
			tc.tamper()
			before := snapshot(t, s.Dir())
			_, err := f.pull(s, tc.version)
			if err == nil {
				t.Fatal("pull succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not say %q", err, tc.text)
			}
			if after := snapshot(t, s.Dir()); after != before {
				t.Errorf("refused pull changed the sysroot:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	// With everything restored, the same sysroot updates fine.
	f.update(s, 3)
}

func TestTamperedObjectIsRefusedByName(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	write(t, tree+"/usr/lib/big.so", strings.Repeat("new library code\n", 50000), 0o755)
	f.publish(tree, 2)
	data, _ := os.ReadFile(tree + "/usr/lib/big.so")
	d := manifest.Digest(sha256.Sum256(data))
	obj := f.repo.Path(d)
	os.Chmod(obj, 0o644)
	if err := os.WriteFile(obj, bytes.Replace(data, []byte("new"), []byte("bad"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, s.Dir())
	_, err := f.pull(s, 2)
	if !errors.Is(err, blobstore.ErrMismatch) {
		t.Fatalf("err = %v, want ErrMismatch", err)
	}
	for _, want := range []string{d.String(), "usr/lib/big.so"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if after := snapshot(t, s.Dir()); after != before {
		t.Errorf("refused pull changed the sysroot:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestApplyAndRollbackNeedSomethingToSwitchTo(t *testing.T) {
	s := newSysroot(t)
	if _, _, err := s.Apply(0); !errors.Is(err, apply.ErrNothingStaged) {
		t.Errorf("apply with nothing staged: %v", err)
	}
	if _, _, err := s.Rollback(); !errors.Is(err, apply.ErrNoPrevious) {
		t.Errorf("rollback with no previous: %v", err)
	}
}

func TestSecondWriterIsRefused(t *testing.T) {
	s := newSysroot(t)
	unlock, err := s.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, _, err := s.Apply(0); !errors.Is(err, fsutil.ErrBusy) {
		t.Fatalf("err = %v, want ErrBusy", err)
	}
}

// TestTreesAreRootOnly: trees/ is 0700, and an older sysroot's 0755 is
// tightened when it is opened, so a setuid program in previous or staged
// is not runnable by a local user through the sysroot's path.
func TestTreesAreRootOnly(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "trees"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := apply.Open(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "trees"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("trees/: %v %v, want 0700", fi.Mode(), err)
	}
}
