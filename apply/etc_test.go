package apply_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/apply"
)

// absent is a want value: the path must not exist in the new tree.
const absent = "<absent>"

// etcTree is makeTree with a fuller /etc: what the merge cases edit.
func etcTree(t *testing.T) string {
	t.Helper()
	tree := makeTree(t, "VERSION=1\n")
	write(t, tree+"/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
	write(t, tree+"/etc/group", "root:x:0:\n", 0o644)
	write(t, tree+"/etc/hostname", "image-default\n", 0o644)
	write(t, tree+"/etc/motd", "welcome v1\n", 0o644)
	write(t, tree+"/etc/old.conf", "old v1\n", 0o644)
	write(t, tree+"/etc/conf.d/a.conf", "a v1\n", 0o644)
	os.Symlink("motd", tree+"/etc/link")
	os.Symlink("hostname", tree+"/etc/link2")
	return tree
}

// TestEtcMerge: on update the node's own changes to /etc (those since the
// current version's manifest) are carried into the new tree, path by path,
// and the image's changes apply where the node left things as they were.
func TestEtcMerge(t *testing.T) {
	tests := []struct {
		name  string
		image func(tree string) // the publisher's changes for v2
		node  func(etc string)  // the node's edits to current/etc under v1
		want  map[string]string // etc path → content, "-> target" or absent
		modes map[string]uint32 // etc path → permission bits
		kept  []string          // PullResult.EtcKept
		local map[string]string // SYSROOT/local files
	}{
		{name: "unchanged locally, image changed",
			image: func(tree string) { write(t, tree+"/etc/motd", "welcome v2\n", 0o644) },
			want:  map[string]string{"etc/motd": "welcome v2\n", "etc/hostname": "image-default\n"}},
		{name: "edited locally, image unchanged",
			node: func(etc string) { write(t, etc+"/hostname", "room-12-laptop-07\n", 0o644) },
			want: map[string]string{"etc/hostname": "room-12-laptop-07\n", "etc/motd": "welcome v1\n"}},
		{name: "changed on both sides: local kept and reported",
			image: func(tree string) { write(t, tree+"/etc/motd", "welcome v2\n", 0o644) },
			node:  func(etc string) { write(t, etc+"/motd", "our school\n", 0o644) },
			want:  map[string]string{"etc/motd": "our school\n"},
			kept:  []string{"etc/motd"}},
		{name: "the same change on both sides is no conflict",
			image: func(tree string) { write(t, tree+"/etc/motd", "welcome v2\n", 0o644) },
			node:  func(etc string) { write(t, etc+"/motd", "welcome v2\n", 0o644) },
			want:  map[string]string{"etc/motd": "welcome v2\n"}},
		{name: "added locally: a file and a directory",
			image: func(tree string) { write(t, tree+"/etc/conf.d/b.conf", "b from the image\n", 0o644) },
			node: func(etc string) {
				write(t, etc+"/wifi.conf", "ssid=school\n", 0o600)
				write(t, etc+"/cron.d/backup", "0 3 * * * backup\n", 0o644)
				write(t, etc+"/cron.d/deep/er", "nested\n", 0o640)
				write(t, etc+"/conf.d/mine.conf", "mine\n", 0o644)
			},
			want: map[string]string{"etc/wifi.conf": "ssid=school\n", "etc/cron.d/backup": "0 3 * * * backup\n",
				"etc/cron.d/deep/er": "nested\n", "etc/conf.d/mine.conf": "mine\n", "etc/conf.d/b.conf": "b from the image\n"},
			modes: map[string]uint32{"etc/wifi.conf": 0o600, "etc/cron.d/deep/er": 0o640}},
		{name: "deleted locally stays deleted",
			image: func(tree string) { write(t, tree+"/etc/old.conf", "old v2\n", 0o644) },
			node: func(etc string) {
				os.Remove(etc + "/old.conf")
				os.Remove(etc + "/hostname")
				os.RemoveAll(etc + "/conf.d")
			},
			want: map[string]string{"etc/old.conf": absent, "etc/hostname": absent, "etc/conf.d": absent},
			kept: []string{"etc/old.conf"}},
		{name: "deleted locally, a directory the image changed inside",
			image: func(tree string) { write(t, tree+"/etc/conf.d/a.conf", "a v2\n", 0o644) },
			node:  func(etc string) { os.RemoveAll(etc + "/conf.d") },
			want:  map[string]string{"etc/conf.d": absent},
			kept:  []string{"etc/conf.d"}},
		{name: "image drops a file the node left alone",
			image: func(tree string) { os.Remove(tree + "/etc/old.conf") },
			want:  map[string]string{"etc/old.conf": absent}},
		{name: "image drops a file the node edited",
			image: func(tree string) { os.Remove(tree + "/etc/old.conf") },
			node:  func(etc string) { write(t, etc+"/old.conf", "still needed\n", 0o644) },
			want:  map[string]string{"etc/old.conf": "still needed\n"},
			kept:  []string{"etc/old.conf"}},
		{name: "image replaces a directory the node edited inside",
			image: func(tree string) {
				os.RemoveAll(tree + "/etc/conf.d")
				write(t, tree+"/etc/conf.d", "now a file\n", 0o644)
			},
			node: func(etc string) { write(t, etc+"/conf.d/a.conf", "a, ours\n", 0o644) },
			want: map[string]string{"etc/conf.d/a.conf": "a, ours\n"},
			kept: []string{"etc/conf.d"}},
		{name: "node replaced a directory with a file",
			image: func(tree string) { write(t, tree+"/etc/conf.d/b.conf", "b from the image\n", 0o644) },
			node: func(etc string) {
				os.RemoveAll(etc + "/conf.d")
				write(t, etc+"/conf.d", "a file now\n", 0o644)
			},
			want: map[string]string{"etc/conf.d": "a file now\n"},
			kept: []string{"etc/conf.d"}},
		{name: "symlinks",
			image: func(tree string) {
				os.Remove(tree + "/etc/link2")
				os.Symlink("motd", tree+"/etc/link2")
			},
			node: func(etc string) {
				os.Remove(etc + "/link")
				os.Symlink("hostname", etc+"/link")
			},
			want: map[string]string{"etc/link": "-> hostname", "etc/link2": "-> motd"}},
		{name: "mode changes",
			image: func(tree string) { os.Chmod(tree+"/etc/hostname", 0o640) },
			node:  func(etc string) { os.Chmod(etc+"/motd", 0o600) },
			want:  map[string]string{"etc/motd": "welcome v1\n", "etc/hostname": "image-default\n"},
			modes: map[string]uint32{"etc/motd": 0o600, "etc/hostname": 0o640}},
		{name: "a new user",
			image: func(tree string) {
				write(t, tree+"/etc/group", "root:x:0:\nsystemd-journal:x:101:\n", 0o644)
				write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
			},
			node: func(etc string) {
				write(t, etc+"/passwd", "root:x:0:0:root:/root:/bin/sh\npupil:x:1000:1000::/home/pupil:/bin/sh\n", 0o644)
				write(t, etc+"/shadow", "root:*:1::::::\npupil:$6$salt$hash:19000::::::\n", 0o640)
				write(t, etc+"/group", "root:x:0:\npupil:x:1000:\n", 0o644)
				write(t, etc+"/sudoers.d/pupil", "pupil ALL=(ALL) ALL\n", 0o440)
			},
			want: map[string]string{"etc/passwd": "root:x:0:0:root:/root:/bin/sh\npupil:x:1000:1000::/home/pupil:/bin/sh\n",
				"etc/shadow": "root:*:1::::::\npupil:$6$salt$hash:19000::::::\n", "etc/group": "root:x:0:\npupil:x:1000:\n",
				"etc/sudoers.d/pupil": "pupil ALL=(ALL) ALL\n", "etc/os-release": "VERSION=2\n"},
			modes: map[string]uint32{"etc/shadow": 0o640, "etc/sudoers.d/pupil": 0o440},
			kept:  []string{"etc/group"}},
		{name: "SYSROOT/local still wins",
			image: func(tree string) { write(t, tree+"/etc/hostname", "new-image-default\n", 0o644) },
			node:  func(etc string) { write(t, etc+"/hostname", "edited in place\n", 0o644) },
			local: map[string]string{"etc/hostname": "room-12-laptop-07\n"},
			want:  map[string]string{"etc/hostname": "room-12-laptop-07\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			tree := etcTree(t)
			f.publish(tree, 1)
			s := newSysroot(t)
			f.update(s, 1)
			if tc.node != nil {
				tc.node(filepath.Join(s.Dir(), "current", "etc"))
			}
			for p, data := range tc.local {
				write(t, filepath.Join(s.LocalDir(), p), data, 0o644)
			}
			if tc.image != nil {
				tc.image(tree)
			}
			f.publish(tree, 2)
			before := snapshot(t, s.TreePath(1))
			res, err := f.pull(s, 2)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.EtcKept, tc.kept) {
				t.Errorf("EtcKept = %q, want %q", res.EtcKept, tc.kept)
			}
			if _, _, err := s.Apply(2); err != nil {
				t.Fatal(err)
			}
			cur := s.TreePath(2)
			for p, want := range tc.want {
				if got := readEntry(filepath.Join(cur, p)); got != want {
					t.Errorf("%s = %q, want %q", p, got, want)
				}
			}
			for p, want := range tc.modes {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(cur, p), &st); err != nil || st.Mode&0o7777 != want {
					t.Errorf("%s: mode %04o, want %04o (%v)", p, st.Mode&0o7777, want, err)
				}
			}
			// Outside etc/ the image is built exactly; the old tree is as
			// the node left it.
			if got, _ := os.ReadFile(filepath.Join(cur, "usr/bin/tool")); string(got) != "#!/bin/sh\necho tool\n" {
				t.Errorf("usr/bin/tool = %q", got)
			}
			if after := snapshot(t, s.TreePath(1)); after != before {
				t.Errorf("the update changed the previous tree:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			checkEtcOwn(t, s)
			if probs, err := s.Verify(context.Background()); err != nil || len(probs) != 0 {
				t.Errorf("verify: %v %v", probs, err)
			}
		})
	}
}

// readEntry describes a path as TestEtcMerge's want values do.
func readEntry(p string) string {
	fi, err := os.Lstat(p)
	switch {
	case err != nil:
		return absent
	case fi.Mode()&os.ModeSymlink != 0:
		target, _ := os.Readlink(p)
		return "-> " + target
	case fi.IsDir():
		return "<dir>"
	}
	b, _ := os.ReadFile(p)
	return string(b)
}

// checkEtcOwn asserts that no file under any tree's etc/ shares its inode:
// link count 1, and no inode of the store's objects and checkout files.
func checkEtcOwn(t *testing.T, s *apply.Sysroot) {
	t.Helper()
	store := map[uint64]string{}
	filepath.WalkDir(s.Repo().Dir(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			store[inode(t, p)] = p
		}
		return nil
	})
	trees, _ := filepath.Glob(filepath.Join(s.Dir(), "trees", "*", "etc"))
	if len(trees) == 0 {
		t.Fatal("no tree has an etc/")
	}
	for _, etc := range trees {
		filepath.WalkDir(etc, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			var st unix.Stat_t
			unix.Lstat(p, &st)
			if st.Nlink != 1 {
				t.Errorf("%s has %d links, want 1", p, st.Nlink)
			}
			if sp, ok := store[st.Ino]; ok {
				t.Errorf("%s is the store's inode %s", p, sp)
			}
			return nil
		})
	}
}

// TestFirstInstallEtcIsCopied: with no current version there is nothing
// to merge: etc/ is the image's, but copies; the rest is linked as ever.
func TestFirstInstallEtcIsCopied(t *testing.T) {
	f := newFleet(t)
	tree := etcTree(t)
	f.publish(tree, 1)
	s := newSysroot(t)
	res, err := f.pull(s, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.EtcKept) != 0 {
		t.Errorf("EtcKept = %q on a first install", res.EtcKept)
	}
	if _, _, err := s.Apply(1); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tree, s.Dir()+"/current/")
	checkEtcOwn(t, s)
	var st unix.Stat_t
	if unix.Lstat(s.Dir()+"/current/usr/lib/big.so", &st); st.Nlink < 2 {
		t.Errorf("usr/lib/big.so has %d links: files outside etc/ are the store's", st.Nlink)
	}
}

// TestWritingEtcChangesNoStoreObject: the booted system writes to its
// /etc (a bind mount of trees/<current>/etc), in place; no object, no
// checkout file and no other tree sees it, and verify finds nothing amiss.
func TestWritingEtcChangesNoStoreObject(t *testing.T) {
	f := newFleet(t)
	tree := etcTree(t)
	f.publish(tree, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	f.publish(tree, 2)
	s := newSysroot(t)
	f.update(s, 1)
	f.update(s, 2)
	store := snapshot(t, s.Repo().Dir())
	prev := snapshot(t, s.TreePath(1))
	for _, p := range []string{"etc/shadow", "etc/motd", "etc/os-release"} {
		fd, err := os.OpenFile(filepath.Join(s.Dir(), "current", p), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fd.WriteAt([]byte("EDITED"), 0)
		fd.Close()
	}
	if after := snapshot(t, s.Repo().Dir()); after != store {
		t.Errorf("writing to current/etc changed the store:\nbefore:\n%s\nafter:\n%s", store, after)
	}
	if after := snapshot(t, s.TreePath(1)); after != prev {
		t.Error("writing to current/etc changed the previous tree")
	}
	if probs, err := s.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Fatalf("verify: %v %v", probs, err)
	}
}

// TestVerifyFlagsEtcLinkedIntoStore: an etc/ file sharing the store's inode
// (a tree built by an older peerup, a hand-made link) is what the copies
// prevent; verify names it, and repair leaves the node's /etc alone.
func TestVerifyFlagsEtcLinkedIntoStore(t *testing.T) {
	f := newFleet(t)
	tree := etcTree(t)
	f.publish(tree, 1)
	s := newSysroot(t)
	f.update(s, 1)
	motd := s.Dir() + "/current/etc/motd"
	objects, _ := filepath.Glob(filepath.Join(s.Repo().Dir(), "objects", "*", "*"))
	var obj string
	for _, o := range objects {
		if b, _ := os.ReadFile(o); string(b) == "welcome v1\n" {
			obj = o
		}
	}
	if obj == "" {
		t.Fatal("no object for etc/motd")
	}
	os.Remove(motd)
	if err := os.Link(obj, motd); err != nil {
		t.Fatal(err)
	}
	probs, err := s.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) != 1 || probs[0].Path != "etc/motd" || !strings.Contains(probs[0].What, "hard-linked 2 times") {
		t.Fatalf("verify: %v", probs)
	}
	_, err = s.Repair(context.Background(), f.client())
	if err == nil || !strings.Contains(err.Error(), "etc/motd") {
		t.Errorf("repair: %v, want it to say it left etc/motd", err)
	}
	if inode(t, motd) != inode(t, obj) {
		t.Error("repair wrote to etc/")
	}
}
