// Package memcg runs a command inside a memory cgroup of its own, the way a
// laptop's desktop leaves an update only so much memory, and reports what
// the command used: its peak RSS (getrusage) and the cgroup's peak, which
// also counts the page cache it filled.
//
// It uses cgroup v2 (memory.max, memory.peak) where the memory controller
// is there, else v1 (memory.limit_in_bytes, memory.max_usage_in_bytes).
package memcg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Roots where the machine may mount a cgroup hierarchy with a memory
// controller, v2 first.
const (
	v2Root = "/sys/fs/cgroup"
	v2Alt  = "/sys/fs/cgroup/unified"
	v1Root = "/sys/fs/cgroup/memory"
)

// Group is a memory cgroup made for one test.
type Group struct {
	dir string
	v2  bool
}

// Available says why memory cgroups cannot be used here, or "".
func Available() string {
	if os.Geteuid() != 0 {
		return "needs root to make a memory cgroup"
	}
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		return "needs GNU time (Debian package time) to read a peak RSS"
	}
	if _, _, err := findRoot(); err != nil {
		return err.Error()
	}
	return ""
}

func findRoot() (string, bool, error) {
	for _, r := range []string{v2Root, v2Alt} {
		b, err := os.ReadFile(filepath.Join(r, "cgroup.controllers"))
		if err == nil && strings.Contains(" "+string(b)+" ", " memory") {
			return r, true, nil
		}
	}
	if _, err := os.Stat(filepath.Join(v1Root, "memory.limit_in_bytes")); err == nil {
		return v1Root, false, nil
	}
	return "", false, errors.New("no cgroup hierarchy with the memory controller")
}

// New makes a cgroup limited to limit bytes of memory (swap included where
// the kernel accounts it). Remove it when done.
func New(name string, limit int64) (*Group, error) {
	root, v2, err := findRoot()
	if err != nil {
		return nil, err
	}
	g := &Group{dir: filepath.Join(root, fmt.Sprintf("peerup-%s-%d", name, os.Getpid())), v2: v2}
	if v2 {
		// The controller must be enabled for the root's children.
		os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+memory"), 0)
	}
	if err := os.Mkdir(g.dir, 0o755); err != nil {
		return nil, fmt.Errorf("memcg: %w", err)
	}
	lim := strconv.FormatInt(limit, 10)
	if v2 {
		err = g.write("memory.max", lim)
		if err == nil {
			g.write("memory.swap.max", "0")
		}
	} else {
		err = g.write("memory.limit_in_bytes", lim)
		if err == nil {
			g.write("memory.memsw.limit_in_bytes", lim) // absent without swap accounting
		}
	}
	if err != nil {
		g.Remove()
		return nil, err
	}
	return g, nil
}

func (g *Group) write(file, value string) error {
	if err := os.WriteFile(filepath.Join(g.dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("memcg: %s: %w", file, err)
	}
	return nil
}

// Command returns a command that joins the group before it runs name
// under GNU time, which writes the peak RSS of name alone to rssFile (read
// it with PeakRSS). Not getrusage of the command itself: a process started
// by exec from a fork of the test inherits the test's high-water mark into
// its ru_maxrss, so only a parent as small as time reports the child's own.
func (g *Group) Command(ctx context.Context, rssFile, name string, args ...string) *exec.Cmd {
	script := `dir=$0 rss=$1; shift; echo $$ > "$dir/cgroup.procs" && exec /usr/bin/time -q -f %M -o "$rss" "$@"`
	return exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", script, g.dir, rssFile, name}, args...)...)
}

// Peak is the most memory the group has held, page cache included.
func (g *Group) Peak() (int64, error) {
	file := "memory.max_usage_in_bytes"
	if g.v2 {
		file = "memory.peak"
	}
	b, err := os.ReadFile(filepath.Join(g.dir, file))
	if err != nil {
		return 0, fmt.Errorf("memcg: %w", err)
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// OOMKilled says whether the kernel killed something in the group for want
// of memory.
func (g *Group) OOMKilled() bool {
	file, key := "memory.oom_control", "oom_kill "
	if g.v2 {
		file, key = "memory.events", "oom_kill "
	}
	b, err := os.ReadFile(filepath.Join(g.dir, file))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if n, ok := strings.CutPrefix(l, key); ok {
			return strings.TrimSpace(n) != "0"
		}
	}
	return false
}

// Remove deletes the group once its processes have ended.
func (g *Group) Remove() error {
	return os.Remove(g.dir)
}

// PeakRSS reads the peak RSS, in bytes, that Command's time wrote.
func PeakRSS(rssFile string) (int64, error) {
	b, err := os.ReadFile(rssFile)
	if err != nil {
		return 0, fmt.Errorf("memcg: peak RSS: %w", err)
	}
	// time writes "Command terminated by signal N" before the figure when
	// the command was killed.
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("memcg: peak RSS: %s is empty", rssFile)
	}
	kib, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memcg: peak RSS: %w", err)
	}
	return kib << 10, nil
}

// Signal sends sig to the command Command started (time's child).
func Signal(cmd *exec.Cmd, sig syscall.Signal) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
	if err != nil {
		return fmt.Errorf("memcg: %w", err)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err == nil {
			return syscall.Kill(pid, sig)
		}
	}
	return errors.New("memcg: the command has no child to signal")
}
