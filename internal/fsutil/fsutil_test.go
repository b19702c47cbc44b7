package fsutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPrivatePath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the check applies to root only, and the cases chown to nobody")
	}
	mk := func(t *testing.T, p string, mode os.FileMode, uid int) {
		t.Helper()
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, base string) string // returns the folder to check
		want  string                                 // "" for no error
	}{
		{"root's own folders", func(t *testing.T, base string) string {
			mk(t, base+"/a", 0o755, 0)
			return base + "/a/sysroot"
		}, ""},
		{"not yet made, below a private folder", func(t *testing.T, base string) string { return base + "/x/y/z" }, ""},
		{"under a sticky world-writable folder", func(t *testing.T, base string) string {
			mk(t, base+"/tmp", os.ModeSticky|0o777, 0)
			mk(t, base+"/tmp/mine", 0o755, 0)
			return base + "/tmp/mine"
		}, ""},
		{"under a world-writable folder", func(t *testing.T, base string) string {
			mk(t, base+"/shared", 0o777, 0)
			return base + "/shared/sysroot"
		}, "writable by group or others (mode 0777)"},
		{"group-writable itself", func(t *testing.T, base string) string {
			mk(t, base+"/team", 0o775, 0)
			return base + "/team"
		}, "writable by group or others (mode 0775)"},
		{"owned by another user", func(t *testing.T, base string) string {
			mk(t, base+"/theirs", 0o755, 65534)
			return base + "/theirs/repo"
		}, "owned by uid 65534"},
		{"a user's folder in a sticky one", func(t *testing.T, base string) string {
			mk(t, base+"/tmp", os.ModeSticky|0o777, 0)
			mk(t, base+"/tmp/theirs", 0o755, 65534)
			return base + "/tmp/theirs"
		}, "owned by uid 65534"},
		{"a link to a world-writable folder", func(t *testing.T, base string) string {
			mk(t, base+"/open", 0o777, 0)
			if err := os.Symlink(base+"/open", base+"/link"); err != nil {
				t.Fatal(err)
			}
			return base + "/link/sysroot"
		}, "writable by group or others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join(t.TempDir(), "base")
			mk(t, base, 0o755, 0)
			err := CheckPrivatePath(tc.setup(t, base))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}
