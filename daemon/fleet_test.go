package daemon

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/peerup/peerup/internal/testlan"
)

// TestFleetConverges: a school server seeding its repo and eight laptops,
// each in its own namespace on 8 Mbit/s shaped links, with nothing but
// discovery to find each other. A new version published on the server
// reaches every laptop, with trees identical to the published one, even
// though one laptop is killed in the middle of fetching it (its neighbours
// may be fetching from it); that laptop, started again after a further
// version came out, catches up to the newest.
func TestFleetConverges(t *testing.T) {
	const laptops = 8
	if why := testlan.Available(); why != "" {
		t.Skip("testlan: " + why)
	}
	bin := buildBinary(t)
	lan := testlan.NewShaped(t, laptops+1, "8mbit")
	f := newTestFleet(t)
	f.publish(t, 1)

	seed := lan.Command(1, bin, "daemon", "--repo", f.repo.Dir(), "--trust", f.pub, "--iface", "e1")
	seed.Stderr = os.Stderr
	if err := seed.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { seed.Process.Kill(); seed.Wait() }()

	sysroots := make([]string, laptops)
	watchers := make([]*watcher, laptops)
	buses := make([]string, laptops)
	logs := make([]*syncBuffer, laptops)
	start := func(i int) *watcher {
		up := ownerWatch(t, buses[i])
		node := i + 2
		logs[i] = &syncBuffer{}
		cmd := lan.Command(node, bin, "daemon", "--sysroot", sysroots[i], "--trust", f.pub, "--bus", buses[i],
			"--iface", fmt.Sprintf("e%d", node), "--policy", "auto")
		cmd.Stderr = io.MultiWriter(os.Stderr, logs[i])
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
		return &watcher{ch: up}
	}
	daemons := make([]*watcher, laptops)
	for i := range laptops {
		sysroots[i] = f.sysrootAt(t, 1)
		buses[i] = privateBus(t)
		watchers[i] = watch(t, buses[i])
		daemons[i] = start(i)
	}
	for i, up := range daemons {
		up.until(t, fmt.Sprintf("laptop %d's daemon", i+1), func(*dbus.Signal) bool { return true })
	}

	// Version 2: 2 MB of new files, as a modest security update.
	files := func(v int) []string {
		var out []string
		for i := range 16 {
			out = append(out, fmt.Sprintf("usr/lib/update-%d-%02d", v, i))
		}
		return out
	}
	addFiles := func(v int) {
		for _, name := range files(v) {
			b := make([]byte, 128<<10)
			rand.Read(b)
			os.MkdirAll(filepath.Join(f.tree, filepath.Dir(name)), 0o755)
			os.WriteFile(filepath.Join(f.tree, name), b, 0o644)
		}
	}
	addFiles(2)
	before := lan.Sent(1)
	f.publish(t, 2)

	// Laptop 1 is switched off in the middle of its fetch.
	victim := lan.Nodes[1].NS
	watchers[0].until(t, "laptop 1 fetching v2", stateIs(StateFetching))
	if out, err := execOut("ip", "netns", "pids", victim); err == nil {
		for _, pid := range out {
			execOut("kill", "-9", pid)
		}
	}
	for i := 1; i < laptops; i++ {
		watchers[i].until(t, fmt.Sprintf("laptop %d applying v2", i+1), stateIs(StateUpdateApplied))
	}
	// The headline: neighbours lend each other the update, so the school
	// server sends about one copy of it, not one per laptop. Its bytes are
	// its own interface's counters; each laptop's are what its pull logged.
	const update = 16 * 128 << 10
	sent := lan.Sent(1) - before
	t.Logf("the server sent %d bytes for a %d-byte update to %d laptops", sent, update, laptops)
	if sent > update*3/2 {
		t.Errorf("the server sent %d bytes, more than 1.5 times the %d-byte update", sent, update)
	}
	for i := 1; i < laptops; i++ {
		if n := neighbourBytes(logs[i].String(), 2, lan.Nodes[0].IP); n == 0 {
			t.Errorf("laptop %d fetched v2 without a byte from a neighbour", i+1)
		}
	}

	addFiles(3)
	f.publish(t, 3)
	for i := 1; i < laptops; i++ {
		watchers[i].until(t, fmt.Sprintf("laptop %d applying v3", i+1), stateIs(StateUpdateApplied))
	}
	// Laptop 1 comes back: it goes straight to v3.
	start(0).until(t, "laptop 1's daemon again", func(*dbus.Signal) bool { return true })
	watchers[0].until(t, "laptop 1 applying v3", stateIs(StateUpdateApplied))

	for i, s := range sysroots {
		for _, name := range append(files(2), files(3)...) {
			want, _ := os.ReadFile(filepath.Join(f.tree, name))
			got, err := os.ReadFile(filepath.Join(s, "current", name))
			if err != nil || string(got) != string(want) {
				t.Fatalf("laptop %d: %s differs from the published tree (%v)", i+1, name, err)
			}
		}
		if v, _ := os.Readlink(filepath.Join(s, "current")); filepath.Base(v) != "3" {
			t.Errorf("laptop %d: current -> %s, want v3", i+1, v)
		}
	}
}

// execOut runs a command and returns the words of its output.
func execOut(name string, args ...string) ([]string, error) {
	out, err := exec.Command(name, args...).Output()
	return strings.Fields(string(out)), err
}

// syncBuffer is a log a daemon writes to while the test reads it.
type syncBuffer = testlan.Log

var (
	stagedLine  = regexp.MustCompile(`msg="update staged" version=(\d+) .*sources="?map\[([^\]]*)\]`)
	sourceBytes = regexp.MustCompile(`http://([^:/]+):\d+/:(\d+)`)
)

// neighbourBytes is what a daemon's log says its pull of version v fetched
// from sources other than the server at serverIP.
func neighbourBytes(log string, v uint64, serverIP string) int64 {
	var n int64
	for _, m := range stagedLine.FindAllStringSubmatch(log, -1) {
		if m[1] != strconv.FormatUint(v, 10) {
			continue
		}
		for _, src := range sourceBytes.FindAllStringSubmatch(m[2], -1) {
			if src[1] != serverIP {
				b, _ := strconv.ParseInt(src[2], 10, 64)
				n += b
			}
		}
	}
	return n
}
