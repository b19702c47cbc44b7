package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// requiredTools are the host programs the rig runs. The e2fsprogs ones live
// in /usr/sbin, which a non-login PATH may lack, so lookTool also tries there.
var requiredTools = []struct{ name, pkg string }{
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"debootstrap", "debootstrap"},
	{"mke2fs", "e2fsprogs"},
	{"debugfs", "e2fsprogs"},
	{"e2fsck", "e2fsprogs"},
	{"unshare", "util-linux"},
	{"chroot", "coreutils"},
	{"cp", "coreutils"},
}

// Available returns nil when the rig can run here, or an error saying what is
// missing, meant for t.Skip. It needs root because debootstrap, chroot and
// mount namespaces do, and because mke2fs -d must read every file of a rootfs.
func Available() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, t := range requiredTools {
		if _, err := lookTool(t.name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", t.name, t.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("vmtest: needs %s", strings.Join(missing, ", "))
	}
	return nil
}

// lookTool finds a host program in PATH or in the sbin directories.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or /usr/sbin", name)
}

// run runs a host program and returns its stdout. On failure the error holds
// the command line and the tail of its combined output, since that is what a
// reader of a failed test needs.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	path, err := lookTool(name)
	if err != nil {
		return nil, err
	}
	cmd := execCommand(ctx, path, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &CmdError{Args: append([]string{name}, args...), Err: err, Output: tail(stdout.String()+stderr.String(), 4000)}
	}
	return stdout.Bytes(), nil
}

// execCommand is exec.CommandContext with the rig's environment.
func execCommand(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = toolEnv()
	return cmd
}

// toolEnv is the environment of every program the rig runs: the caller's,
// with a PATH that has the sbin directories (chroot'ed Debian scripts need
// them) and no interactive debconf.
func toolEnv() []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8"}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" && k != "DEBIAN_FRONTEND" && k != "LC_ALL" && k != "LANG" {
			env = append(env, kv)
		}
	}
	return env
}

// CmdError is a host program that failed, with the end of what it printed.
type CmdError struct {
	Args   []string
	Err    error
	Output string
}

func (e *CmdError) Error() string {
	return fmt.Sprintf("%s: %v\n%s", strings.Join(e.Args, " "), e.Err, e.Output)
}

func (e *CmdError) Unwrap() error { return e.Err }

// exitCode is the exit status of a failed command, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// tail is the last n bytes of s, cut at a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "…\n" + s
}
