package daemon

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/internal/testlan"
)

// lanDaemon runs `peerup daemon args` in node i of lan under the host name
// host (its own UTS namespace), keeping its log, and waits until it serves.
func lanDaemon(t *testing.T, lan *testlan.LAN, i int, bin, host string, args ...string) *syncBuffer {
	t.Helper()
	return lanServe(t, lan, i, lan.Command(i, "unshare", append([]string{"-u", "sh", "-c", `hostname "$0" && exec "$@"`, host, bin, "daemon"}, args...)...))
}

// lanServe starts cmd, a daemon in node i of lan, keeping its log, and
// waits until it serves.
func lanServe(t *testing.T, lan *testlan.LAN, i int, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = io.MultiWriter(os.Stderr, log), io.MultiWriter(os.Stderr, log)
	lan.Serve(cmd, 7380, log)
	return log
}

// waitVersion waits until every sysroot's current tree is version v.
func waitVersion(t *testing.T, sysroots []string, v int, within time.Duration, logs ...*syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		pending := 0
		for _, s := range sysroots {
			if cur, _ := os.Readlink(filepath.Join(s, "current")); filepath.Base(cur) != fmt.Sprint(v) {
				pending++
			}
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			for i, l := range logs {
				t.Logf("log %d:\n%s", i+1, l.String())
			}
			t.Fatalf("%d of %d laptops not at v%d after %s", pending, len(sysroots), v, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if why := testlan.Available(); why != "" {
		t.Skip("testlan: " + why)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install util-linux avahi-daemon avahi-utils dbus)", tool)
		}
	}
}

// discoverAll runs `peerup discover` in node i until it lists every URL in
// want, or fails after within.
func discoverAll(t *testing.T, lan *testlan.LAN, i int, bin string, want []string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	var out []byte
	for time.Now().Before(deadline) {
		out, _ = lan.Command(i, bin, "discover", "--image", "school-laptop", "--count", fmt.Sprint(len(want)+1), "--timeout", "5s").CombinedOutput()
		missing := 0
		for _, u := range want {
			if !strings.Contains(string(out), u+" ") {
				missing++
			}
		}
		if missing == 0 {
			return string(out)
		}
	}
	t.Fatalf("peerup discover did not list all of %v:\n%s", want, out)
	return ""
}

// TestIdenticalLaptopsWithoutRoutes: six laptops made from one image, all
// with the same host name, on a LAN with no routes at all (an address on
// the bridge and nothing else), no --iface given. Avahi in another node
// lists every one of them with its TXT, so does `peerup discover`, and a
// version published on the seed reaches all six by mDNS and multicast
// alone.
func TestIdenticalLaptopsWithoutRoutes(t *testing.T) {
	const laptops = 6
	needTools(t, "unshare", "avahi-daemon", "avahi-browse", "dbus-daemon")
	bin := buildBinary(t)
	lan := testlan.New(t, laptops+2)
	lan.DropMulticastRoutes()
	f := newTestFleet(t)
	f.publish(t, 1)
	logs := []*syncBuffer{lanDaemon(t, lan, 1, bin, "xo", "--repo", f.repo.Dir(), "--trust", f.pub)}
	sysroots := make([]string, laptops)
	var urls []string
	for i := range sysroots {
		sysroots[i] = f.sysrootAt(t, 1)
		logs = append(logs, lanDaemon(t, lan, i+2, bin, "xo", "--sysroot", sysroots[i], "--trust", f.pub, "--bus", "none", "--policy", "auto"))
		urls = append(urls, "http://"+lan.Nodes[i+1].IP+":7380/")
	}
	observer := laptops + 2

	script := testlan.AvahiScript(t.TempDir(), lan.Nodes[observer-1].Iface, "", fmt.Sprintf(
		`for i in $(seq 15); do avahi-browse -rtp _peerup._tcp > /tmp/browse 2>&1; `+
			`[ "$(grep '^=' /tmp/browse | cut -d';' -f4 | sort -u | wc -l)" -ge %d ] && break; sleep 1; done; cat /tmp/browse`, laptops+1))
	out, err := lan.Command(observer, "unshare", "-m", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("avahi-browse: %v\n%s", err, out)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "=") {
			names[strings.Split(line, ";")[3]] = true
		}
	}
	if len(names) < laptops+1 {
		t.Errorf("avahi-browse lists %d services, want %d (the seed and %d laptops):\n%s", len(names), laptops+1, laptops, out)
	}
	for i := range laptops {
		ip := lan.Nodes[i+1].IP
		found := false
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "=") && strings.Contains(line, ";"+ip+";7380;") &&
				strings.Contains(line, `"image=school-laptop"`) && strings.Contains(line, `"version=1"`) {
				found = true
			}
		}
		if !found {
			t.Errorf("avahi-browse does not list laptop %d (%s) with its TXT:\n%s", i+1, ip, out)
		}
	}
	t.Logf("avahi-browse saw %d distinct services", len(names))
	discoverAll(t, lan, observer, bin, urls, 30*time.Second)

	f.publish(t, 2)
	waitVersion(t, sysroots, 2, 2*time.Minute, logs...)
}

// TestSeedOnTwoLANs: a seed with one interface on each of two bridges and
// laptops on both, no --iface and no routes: every laptop gets the update,
// each told the seed's address on its own LAN.
func TestSeedOnTwoLANs(t *testing.T) {
	needTools(t, "unshare")
	bin := buildBinary(t)
	a, b := testlan.New(t, 3), testlan.New(t, 2)
	a.Attach(1, b, "b1", 200)
	a.DropMulticastRoutes()
	b.DropMulticastRoutes()
	f := newTestFleet(t)
	f.publish(t, 1)
	logs := []*syncBuffer{lanDaemon(t, a, 1, bin, "server", "--repo", f.repo.Dir(), "--trust", f.pub)}
	var sysroots []string
	for _, at := range []struct {
		lan  *testlan.LAN
		node int
	}{{a, 2}, {a, 3}, {b, 1}, {b, 2}} {
		s := f.sysrootAt(t, 1)
		sysroots = append(sysroots, s)
		logs = append(logs, lanDaemon(t, at.lan, at.node, bin, "xo", "--sysroot", s, "--trust", f.pub, "--bus", "none", "--policy", "auto"))
	}
	f.publish(t, 2)
	waitVersion(t, sysroots, 2, 2*time.Minute, logs...)
}

// TestLaptopRejoinsWithANewAddress: a laptop whose interface goes down and
// comes back under a new address is found there again, and wakes to an
// announcement the seed makes after it returned.
func TestLaptopRejoinsWithANewAddress(t *testing.T) {
	needTools(t, "unshare")
	bin := buildBinary(t)
	lan := testlan.New(t, 3)
	lan.DropMulticastRoutes()
	f := newTestFleet(t)
	f.publish(t, 1)
	seed := lanDaemon(t, lan, 1, bin, "server", "--repo", f.repo.Dir(), "--trust", f.pub)
	s := f.sysrootAt(t, 1)
	laptop := lanDaemon(t, lan, 2, bin, "xo", "--sysroot", s, "--trust", f.pub, "--bus", "none", "--policy", "auto")
	discoverAll(t, lan, 3, bin, []string{"http://" + lan.Nodes[1].IP + ":7380/"}, 30*time.Second)

	ip := lan.Readdress(2, 77)
	discoverAll(t, lan, 3, bin, []string{"http://" + ip + ":7380/"}, 30*time.Second)
	f.publish(t, 2)
	waitVersion(t, []string{s}, 2, time.Minute, seed, laptop)
	if !strings.Contains(laptop.String(), "update applied") {
		t.Errorf("the laptop's log does not show the update:\n%s", laptop.String())
	}
}
