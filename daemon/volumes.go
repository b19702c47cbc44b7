package daemon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/blobstore"
)

// volumeRescan is how often the volumes are looked at with no event at
// all: a fallback for changes neither inotify nor the mount table report
// (a folder created after start), and for a wake-up the core could not
// take because it was busy. It costs a few stats, no traffic.
const volumeRescan = 30 * time.Second

// mountRoots are where desktops and udisks mount removable media; with
// scan-mounts on, any mount under them holding a repo is a volume too.
func mountRoots() []string { return []string{"/media/", "/run/media/", "/mnt/"} }

// volumes watches folders where a USB stick holding a repo may appear (a
// configured mount path, or any removable mount if asked) and tells the
// daemon when one gains a repo or its repo changes, so that it polls the
// stick like a LAN peer. What the stick holds is trusted no more than a
// peer's: the pull verifies every byte.
type volumes struct {
	paths      []string
	scanMounts bool
	roots      []string // where scan-mounts looks
	log        *slog.Logger

	mu      sync.Mutex
	seen    map[string]string // path → fingerprint of its repo ("" none)
	pending bool              // a change the core has not taken yet
}

func newVolumes(paths []string, scanMounts bool, log *slog.Logger) *volumes {
	abs := make([]string, 0, len(paths))
	for _, p := range paths {
		if a, err := filepath.Abs(p); err == nil {
			abs = append(abs, a)
		}
	}
	return &volumes{paths: abs, scanMounts: scanMounts, roots: mountRoots(), log: log, seen: map[string]string{}}
}

// Present lists the volumes that hold a repo now, in a stable order.
func (v *volumes) Present() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for _, p := range v.candidates() {
		if v.seen[p] != "" {
			out = append(out, p)
		}
	}
	return out
}

// candidates are the configured paths and, with scan-mounts, the
// removable mounts last seen. The caller holds mu.
func (v *volumes) candidates() []string {
	out := append([]string(nil), v.paths...)
	for p := range v.seen {
		if !contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// run watches until ctx ends. It looks at every volume at start, when a
// watched folder changes (inotify, through fsnotify), when the mount table
// changes (poll on /proc/self/mountinfo, which is how a stick being
// mounted shows), and every volumeRescan. found is called for each volume
// that gained a repo or whose repo changed; then hint, which returns false
// if the core was busy and is called again at each wake-up until it takes
// the change.
func (v *volumes) run(ctx context.Context, found func(path string), hint func() bool) {
	w, err := fsnotify.NewWatcher()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if err != nil {
		v.log.Warn("volumes: no inotify, rescanning on a timer only", "err", err)
		w = nil
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	mounts, changed := watchMounts(ctx, v.log)
	tick := time.NewTicker(volumeRescan)
	defer tick.Stop()
	for {
		for _, p := range v.scan(w, mounts) {
			found(p)
		}
		v.mu.Lock()
		pending := v.pending
		v.mu.Unlock()
		if pending && hint() {
			v.mu.Lock()
			v.pending = false
			v.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-events:
			drain(events) // one rescan covers every event so far
		case <-errs:
		case m := <-changed:
			mounts = m
		case <-tick.C:
		}
	}
}

func drain(events <-chan fsnotify.Event) {
	for {
		select {
		case <-events:
		default:
			return
		}
	}
}

// watchMounts returns the mount points now, and sends them anew each time
// the mount table changes, until ctx ends. The kernel reports a change as
// POLLPRI on /proc/self/mountinfo, which fsnotify cannot watch.
func watchMounts(ctx context.Context, log *slog.Logger) ([]string, <-chan []string) {
	out := make(chan []string, 1)
	mi, err := unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		log.Warn("volumes: cannot watch the mount table", "err", err)
		return nil, out
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		log.Warn("volumes: cannot watch the mount table", "err", err)
		unix.Close(mi)
		return nil, out
	}
	buf := make([]byte, 64<<10)
	now := readMountinfo(mi, buf)
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		close(woken)
	})
	go func() {
		defer func() {
			if !stop() {
				<-woken // never close the eventfd under a write to it
			}
			unix.Close(mi)
			unix.Close(wake)
		}()
		for {
			fds := []unix.PollFd{{Fd: int32(wake), Events: unix.POLLIN}, {Fd: int32(mi), Events: unix.POLLPRI}}
			if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
				log.Error("volumes: poll of the mount table", "err", err)
				return
			}
			if fds[0].Revents != 0 {
				return
			}
			if fds[1].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
				// Reading the table again re-arms the notification.
				m := readMountinfo(mi, buf)
				select {
				case <-out: // an older table the loop has not taken
				default:
				}
				out <- m
			}
		}
	}()
	return now, out
}

// scan looks at every volume, (re)adding inotify watches (a stick mounted
// on a path is a new directory there, which needs its own watch), and
// returns those that gained a repo or whose repo changed.
func (v *volumes) scan(w *fsnotify.Watcher, mounts []string) (fresh []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	paths := append([]string(nil), v.paths...)
	if v.scanMounts {
		for _, m := range mounts {
			if !contains(paths, m) && under(m, v.roots) {
				paths = append(paths, m)
			}
		}
	}
	for p := range v.seen {
		if !contains(paths, p) {
			delete(v.seen, p) // unmounted
		}
	}
	for _, p := range paths {
		if w != nil {
			// Again each time: a stick mounted on p is a new directory
			// there, which needs its own watch. A missing path is no error.
			w.Add(p)
		}
		fp := fingerprint(p)
		if fp == v.seen[p] {
			continue
		}
		if fp == "" && !contains(v.paths, p) {
			delete(v.seen, p)
			continue
		}
		v.seen[p] = fp
		if fp != "" {
			v.log.Info("repo found on a volume", "path", p)
			v.pending = true
			fresh = append(fresh, p)
		}
	}
	return fresh
}

func under(mountPoint string, roots []string) bool {
	for _, r := range roots {
		if strings.HasPrefix(mountPoint, r) {
			return true
		}
	}
	return false
}

// fingerprint names what repo a folder holds: its device and inode (a
// different stick) and its index (a new export on the same one). "" means
// no repo, including one whose export is still being written (the marker
// comes last).
func fingerprint(dir string) string {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return ""
	}
	marker, err := os.ReadFile(blobstore.LayoutOf(dir).Marker())
	if err != nil || string(marker) != blobstore.MarkerMagic {
		return ""
	}
	f, err := os.Open(blobstore.LayoutOf(dir).Index())
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, blobstore.MaxIndex+1)); err != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d:%x", st.Dev, st.Ino, h.Sum(nil))
}

// readMountinfo reads the mount table from fd's start and returns the
// mount points.
func readMountinfo(fd int, buf []byte) []string {
	if fd < 0 {
		return nil
	}
	var all bytes.Buffer
	for off := int64(0); ; {
		n, err := unix.Pread(fd, buf, off)
		if n <= 0 || err != nil {
			break
		}
		all.Write(buf[:n])
		off += int64(n)
	}
	return parseMountinfo(&all)
}

// parseMountinfo returns field 5 of each line, the mount point, unescaped
// (the kernel writes space, tab, newline and backslash as \ooo).
func parseMountinfo(r io.Reader) []string {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		out = append(out, unescapeMount(f[4]))
	}
	return out
}

func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
