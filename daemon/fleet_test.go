package daemon

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/godbus/dbus/v5"

	"peerup/internal/testlan"
)

// TestFleetConverges: a school server seeding its repo and eight laptops,
// each in its own namespace on 8 Mbit/s shaped links. A new version
// published on the server reaches every laptop, with trees identical to the
// published one.
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
	for i := range laptops {
		sysroots[i] = f.sysrootAt(t, 1)
		bus := privateBus(t)
		up := ownerWatch(t, bus)
		watchers[i] = watch(t, bus)
		node := i + 2
		startIn(t, lan, node, bin, "daemon", "--sysroot", sysroots[i], "--trust", f.pub, "--bus", bus,
			"--iface", fmt.Sprintf("e%d", node), "--policy", "auto")
		(&watcher{ch: up}).until(t, fmt.Sprintf("laptop %d's daemon", i+1), func(*dbus.Signal) bool { return true })
	}

	// Version 2: 2 MB of new files, as a modest security update.
	for i := range 4 {
		b := make([]byte, 512<<10)
		rand.Read(b)
		os.WriteFile(filepath.Join(f.tree, fmt.Sprintf("etc/update-%d", i)), b, 0o644)
	}
	before := lan.Sent(1)
	f.publish(t, 2)
	for i, w := range watchers {
		w.until(t, fmt.Sprintf("laptop %d applying v2", i+1), stateIs(StateUpdateApplied))
	}
	for i, s := range sysroots {
		for j := range 4 {
			want, _ := os.ReadFile(filepath.Join(f.tree, fmt.Sprintf("etc/update-%d", j)))
			got, _ := os.ReadFile(filepath.Join(s, fmt.Sprintf("current/etc/update-%d", j)))
			if string(got) != string(want) {
				t.Fatalf("laptop %d: etc/update-%d differs from the published tree", i+1, j)
			}
		}
	}
	t.Logf("the server sent %d bytes for a 2 MB update to %d laptops", lan.Sent(1)-before, laptops)
}
