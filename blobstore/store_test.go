package blobstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/manifest"
)

func digest(s string) Digest { return Digest(sha256.Sum256([]byte(s))) }

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestPutVerifies(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := "hello, school"
	tests := []struct {
		name string
		data string
		size int64
		want error
	}{
		{"wrong bytes", "hellO, school", int64(len(good)), ErrMismatch},
		{"too long", good + "!", int64(len(good)), ErrTooLong},
		{"endless", good + strings.Repeat("x", 1<<20), int64(len(good)), ErrTooLong},
		{"truncated", good[:5], int64(len(good)), ErrTooShort},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := s.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer b.Abort()
			err = b.Put(ctx, digest(good), tc.size, strings.NewReader(tc.data))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), digest(good).String()) {
				t.Errorf("error does not name the object: %v", err)
			}
			if b.Has(digest(good)) {
				t.Fatal("bad data is visible under the object's name")
			}
			if files := listDir(t, b.dir); len(files) != 0 {
				t.Fatalf("left behind: %v", files)
			}
		})
	}
	b, _ := s.Begin()
	if err := b.Put(ctx, digest(good), int64(len(good)), strings.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	if s.Has(digest(good)) {
		t.Fatal("object visible before commit")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.Path(digest(good)))
	if err != nil || string(got) != good {
		t.Fatalf("committed object = %q, %v", got, err)
	}
	fi, _ := os.Stat(s.Path(digest(good)))
	if fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("object is writable: %v", fi.Mode())
	}
	if files := listDir(t, filepath.Join(s.Root(), "staging")); len(files) != 0 {
		t.Fatalf("staging not empty after commit: %v", files)
	}
}

func TestPutHonoursContext(t *testing.T) {
	s, _ := Open(t.TempDir())
	b, _ := s.Begin()
	defer b.Abort()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Put(ctx, digest("x"), 1, strings.NewReader("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func ino(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestLinkFileHardLinkRule checks SPEC §4: same bytes and metadata share an
// inode, same bytes with other metadata do not, and the object's own inode is
// reused for the first metadata so the bytes are stored once.
func TestLinkFileHardLinkRule(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(t.TempDir())
	b, _ := s.Begin()
	data := "#!/bin/sh\necho hi\n"
	d := digest(data)
	if err := b.Put(ctx, d, int64(len(data)), strings.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	exec := Meta{Mode: 0755, UID: uid, GID: gid}
	plain := Meta{Mode: 0644, UID: uid, GID: gid}
	p1, err := b.LinkFile(d, exec)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := b.LinkFile(d, exec)
	p3, err := b.LinkFile(d, plain)
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := b.ObjectPath(d)
	if ino(t, p1) != ino(t, p2) || ino(t, p1) != ino(t, obj) {
		t.Error("same bytes and metadata do not share the object's inode")
	}
	if ino(t, p3) == ino(t, p1) {
		t.Fatal("same bytes with another mode share an inode")
	}
	for p, mode := range map[string]os.FileMode{p1: 0755, p3: 0644} {
		fi, _ := os.Lstat(p)
		if fi.Mode().Perm() != mode || fi.ModTime().Unix() != 0 {
			t.Errorf("%s: mode %v mtime %v", p, fi.Mode(), fi.ModTime())
		}
		if got, _ := os.ReadFile(p); string(got) != data {
			t.Errorf("%s: content %q", p, got)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b2, _ := s.Begin()
	defer b2.Abort()
	p4, err := b2.LinkFile(d, plain)
	if err != nil || p4 != s.filePath(FileID(d, plain)) {
		t.Fatalf("committed file not reused: %v", err)
	}
	if _, err := b2.LinkFile(digest("absent"), plain); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing object: err = %v", err)
	}
}

func TestFileIDCoversMetadata(t *testing.T) {
	d := digest("x")
	base := Meta{Mode: 0644}
	variants := []Meta{
		{Mode: 0755}, {Mode: 04644}, {Mode: 0644, UID: 1}, {Mode: 0644, GID: 1},
		{Mode: 0644, Xattrs: []manifest.Xattr{{Name: "user.a", Value: []byte("1")}}},
		{Mode: 0644, Xattrs: []manifest.Xattr{{Name: "user.a", Value: []byte("2")}}},
	}
	seen := map[Digest]bool{FileID(d, base): true, FileID(digest("y"), base): true}
	for _, m := range variants {
		id := FileID(d, m)
		if seen[id] {
			t.Errorf("FileID collides for %+v", m)
		}
		seen[id] = true
	}
}

func TestIndexRoundTripAndRejects(t *testing.T) {
	ix := &Index{}
	ix.Set(IndexEntry{Image: "b", Version: 2, Manifest: digest("2")})
	ix.Set(IndexEntry{Image: "a", Version: 10, Manifest: digest("10")})
	ix.Set(IndexEntry{Image: "b", Version: 1, Manifest: digest("1")})
	got, err := ParseIndex(ix.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Marshal(), ix.Marshal()) || len(got.Entries) != 3 {
		t.Fatalf("round trip:\n%s", got.Marshal())
	}
	if l, _ := got.Latest("b"); l.Version != 2 {
		t.Fatalf("latest b = %d", l.Version)
	}
	good := string(ix.Marshal())
	for name, bad := range map[string]string{
		"magic":     strings.Replace(good, "peerup-index 1", "peerup-index 2", 1),
		"unsorted":  strings.Replace(good, "a 10", "c 10", 1),
		"version 0": strings.Replace(good, "a 10", "a 0", 1),
		"leading 0": strings.Replace(good, "a 10", "a 010", 1),
		"bad image": strings.Replace(good, "a 10", "A 10", 1),
		"fields":    good + "a 11\n",
		"truncated": good[:len(good)-1],
	} {
		if _, err := ParseIndex([]byte(bad)); !errors.Is(err, ErrIndex) {
			t.Errorf("%s: err = %v, want ErrIndex", name, err)
		}
	}
}

func FuzzParseIndex(f *testing.F) {
	ix := &Index{}
	ix.Set(IndexEntry{Image: "a", Version: 1, Manifest: digest("1")})
	f.Add(ix.Marshal())
	f.Add([]byte("peerup-index 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := ParseIndex(b)
		if err != nil {
			if !errors.Is(err, ErrIndex) {
				t.Fatalf("error does not wrap ErrIndex: %v", err)
			}
			return
		}
		if !bytes.Equal(ix.Marshal(), b) {
			t.Fatalf("accepted a non-canonical index %q", b)
		}
	})
}

// TestSalvageKeepsOnlyVerifiedLeftovers: a batch interrupted by a crash left
// one good object, one whose bytes were lost, and a half-written temp file.
func TestSalvageKeepsOnlyVerifiedLeftovers(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(t.TempDir())
	old, _ := s.Begin()
	good, lost := "verified before the crash", "lost in the crash"
	old.Put(ctx, digest(good), int64(len(good)), strings.NewReader(good))
	old.Put(ctx, digest(lost), int64(len(lost)), strings.NewReader(lost))
	os.Chmod(old.stagedObject(digest(lost)), 0o644)
	os.WriteFile(old.stagedObject(digest(lost)), []byte("\x00\x00\x00"), 0o644)
	os.WriteFile(filepath.Join(old.dir, "tmp-123"), []byte("half"), 0o644)
	// old is never committed or aborted: the process died.

	b, _ := s.Begin()
	n, size, err := b.Salvage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || size != int64(len(good)) || !b.Has(digest(good)) || b.Has(digest(lost)) {
		t.Fatalf("salvaged %d objects (%d bytes); good kept %v, lost kept %v", n, size, b.Has(digest(good)), b.Has(digest(lost)))
	}
	if _, err := os.Stat(old.dir); err == nil {
		t.Fatal("the interrupted batch's folder is still there")
	}
	if err := b.Commit(); err != nil || !s.Has(digest(good)) {
		t.Fatalf("commit: %v", err)
	}
}

// TestReplaceRenamesFreshCopiesOverDamaged: an object edited in place
// through a tree, and a checkout file sharing its inode, are neither
// reused nor read by a batch that replaces them; Commit puts the fresh
// copies in their place, and drops a checkout file it did not make anew
// that still links the damaged inode.
func TestReplaceRenamesFreshCopiesOverDamaged(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := "library bytes"
	d := digest(good)
	m, other := Meta{Mode: 0o755}, Meta{Mode: 0o555}
	b, _ := s.Begin()
	if err := b.Put(ctx, d, int64(len(good)), strings.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.LinkFile(d, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	// A second name for the damaged inode, as an unkept version's file.
	stale := s.FilePath(FileID(d, other))
	os.MkdirAll(filepath.Dir(stale), 0o755)
	if err := os.Link(s.Path(d), stale); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(s.Path(d), []byte("LIBRARY BYTES"), 0) // through a tree: the inode is 0755

	b, _ = s.Begin()
	defer b.Abort()
	b.Replace(d)
	id := FileID(d, m)
	if b.Has(d) || !b.Replaces(d, id) {
		t.Fatal("the damaged object counts as held")
	}
	if _, err := b.ObjectPath(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ObjectPath of the damaged object: %v", err)
	}
	if err := b.Put(ctx, d, int64(len(good)), strings.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	p, err := b.LinkFile(d, m)
	if err != nil || p == s.FilePath(id) {
		t.Fatalf("LinkFile reused the damaged file: %s, %v", p, err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{s.Path(d), s.FilePath(id)} {
		if got, _ := os.ReadFile(p); string(got) != good {
			t.Errorf("%s after the commit: %q", p, got)
		}
	}
	if _, err := os.Lstat(stale); err == nil {
		t.Error("a file linking the damaged inode stayed")
	}
}
