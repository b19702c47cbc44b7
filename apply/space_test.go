package apply_test

import (
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peerup/peerup/apply"
	"github.com/peerup/peerup/internal/testfs"
)

// TestFullDiskRefusedCleanly: an update that cannot fit on a small
// filesystem fails before fetching, says so clearly, and changes nothing.
func TestFullDiskRefusedCleanly(t *testing.T) {
	f, _, s := hugeUpdateOn(t, "24m")
	before := snapshot(t, s.Dir())
	_, err := f.pull(s, 2)
	if !errors.Is(err, apply.ErrNoSpace) || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("err = %v, want a clear ErrNoSpace", err)
	}
	if after := snapshot(t, s.Dir()); after != before {
		t.Fatal("the refused update changed the sysroot")
	}
	if st, _ := s.Status(); st.Current != 1 || st.Staged != 0 {
		t.Fatalf("status %+v", st)
	}
}

// TestJustLargeEnoughDiskAccepted: a 30 MiB file on a 48 MiB filesystem
// fits (the object once, the margin, the tree's links), and the update
// completes; counting a whole object twice, as raw and as what the wire
// carries, would ask for 68 MiB and refuse it.
func TestJustLargeEnoughDiskAccepted(t *testing.T) {
	f, tree, s := hugeUpdateOn(t, "48m")
	if _, err := f.pull(s, 2); err != nil {
		t.Fatalf("the update that fits was refused: %v", err)
	}
	if _, _, err := s.Apply(2); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tree, filepath.Join(s.Dir(), "current")+"/")
}

// hugeUpdateOn makes a sysroot at v1 on a tmpfs of the given size, and a
// fleet whose v2 adds a 30 MiB file (random bytes: no encoding shrinks it).
func hugeUpdateOn(t *testing.T, size string) (*fleet, string, *apply.Sysroot) {
	t.Helper()
	small := smallTmpfs(t, size)
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	s, err := apply.Open(filepath.Join(small, "sysroot"))
	if err != nil {
		t.Fatal(err)
	}
	f.update(s, 1)
	big := make([]byte, 30<<20)
	rand.Read(big)
	write(t, tree+"/usr/lib/huge.so", string(big), 0o755)
	f.publish(tree, 2)
	return f, tree, s
}

// smallTmpfs mounts a tmpfs of the given size (mount's syntax, "24m") in a
// temporary folder, skipping the test when it cannot.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	return testfs.Tmpfs(t, "size="+size)
}
