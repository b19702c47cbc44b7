package vmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MakeDisk makes img an ext4 image of size (mke2fs syntax: "3G", "800M")
// holding a copy of dir, with mke2fs -d: no loop device, no mount, and hard
// links kept. An existing img is replaced.
func MakeDisk(ctx context.Context, dir, img, size string) error {
	if err := os.Remove(img); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vmtest: make disk: %w", err)
	}
	if _, err := run(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-d", dir, img, size); err != nil {
		return fmt.Errorf("vmtest: make disk from %s: %w", dir, err)
	}
	return nil
}

// MakeEmptyDisk makes img an empty ext4 image of size, for a guest to
// format-free scratch space or a data volume.
func MakeEmptyDisk(ctx context.Context, img, size string) error {
	if err := os.Remove(img); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vmtest: make disk: %w", err)
	}
	if _, err := run(ctx, "mke2fs", "-q", "-F", "-t", "ext4", img, size); err != nil {
		return fmt.Errorf("vmtest: make empty disk: %w", err)
	}
	return nil
}

// debugfs runs one debugfs request on img, read-only. debugfs reports most
// failures (a missing file, say) on stderr with exit status 0, so any stderr
// line besides its version banner counts as an error.
func debugfs(ctx context.Context, img, request string) ([]byte, error) {
	path, err := lookTool("debugfs")
	if err != nil {
		return nil, err
	}
	var stdout, stderr strings.Builder
	cmd := execCommand(ctx, path, "-R", request, img)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	runErr := cmd.Run()
	var complaints []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "debugfs ") {
			complaints = append(complaints, l)
		}
	}
	if runErr != nil || len(complaints) > 0 {
		return nil, fmt.Errorf("vmtest: debugfs -R %q %s: %v %s", request, img, runErr, strings.Join(complaints, "; "))
	}
	return []byte(stdout.String()), nil
}

// quoteDebugfs quotes a path for a debugfs request, whose parser splits on
// spaces and honours double quotes but has no escape for them.
func quoteDebugfs(p string) (string, error) {
	if strings.ContainsAny(p, "\"\n") {
		return "", fmt.Errorf("vmtest: debugfs cannot name %q", p)
	}
	return `"` + p + `"`, nil
}

// DebugfsCat returns the contents of the file at path (absolute, inside the
// image) in the ext4 image img, without mounting it.
func DebugfsCat(ctx context.Context, img, path string) ([]byte, error) {
	q, err := quoteDebugfs(path)
	if err != nil {
		return nil, err
	}
	return debugfs(ctx, img, "cat "+q)
}

// DebugfsReadlink returns the target of the symlink at path in img. Short
// targets live in the inode ("Fast link dest:" in debugfs stat); longer ones
// in a data block, which cat dumps.
func DebugfsReadlink(ctx context.Context, img, path string) (string, error) {
	q, err := quoteDebugfs(path)
	if err != nil {
		return "", err
	}
	out, err := debugfs(ctx, img, "stat "+q)
	if err != nil {
		return "", err
	}
	s := string(out)
	if !strings.Contains(s, "Type: symlink") {
		return "", fmt.Errorf("vmtest: %s in %s is not a symlink", path, img)
	}
	if _, rest, ok := strings.Cut(s, "Fast link dest: "); ok {
		rest, _, _ = strings.Cut(rest, "\n")
		return strings.Trim(rest, `"`), nil
	}
	b, err := debugfs(ctx, img, "cat "+q)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// DebugfsLs lists the names in the directory at path in img (without . and
// ..), for tests that look at what a guest left behind.
func DebugfsLs(ctx context.Context, img, path string) ([]string, error) {
	q, err := quoteDebugfs(path)
	if err != nil {
		return nil, err
	}
	out, err := debugfs(ctx, img, "ls -p "+q)
	if err != nil {
		return nil, err
	}
	// ls -p prints /inode/mode/uid/gid/name/size/ per entry.
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Split(l, "/")
		if len(f) < 7 || f[5] == "." || f[5] == ".." {
			continue
		}
		names = append(names, f[5])
	}
	return names, nil
}

// Fsck checks img after a power cut as a boot would find it: it first
// replays the journal (what the kernel does at mount), then requires a full
// read-only check, e2fsck -fn, to find nothing. The error holds e2fsck's
// output.
func Fsck(ctx context.Context, img string) error {
	// Exit 1 means "errors corrected", which here is the journal replayed.
	if _, err := run(ctx, "e2fsck", "-E", "journal_only", "-p", img); err != nil && exitCode(err) != 1 {
		return fmt.Errorf("vmtest: fsck: replaying the journal: %w", err)
	}
	if _, err := run(ctx, "e2fsck", "-f", "-n", img); err != nil {
		return fmt.Errorf("vmtest: fsck: %s is not clean: %w", img, err)
	}
	return nil
}
