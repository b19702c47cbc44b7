package daemon

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"github.com/peerup/peerup/discovery"
	"github.com/peerup/peerup/internal/hostile"
	"github.com/peerup/peerup/internal/testlan"
)

// inNamespace runs f with the calling thread in network namespace ns, so
// the sockets f opens live on that node of the LAN.
func inNamespace(t *testing.T, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return // the thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
}

// TestAttackDiscoveryFloodOnTheLAN: an attacker on the school LAN sends
// 10,000 forged mDNS adverts and 10,000 forged announcements on the group
// of the laptop's version, each offering a newer version at an address in
// the LAN where nobody answers. The laptop's daemon keeps its memory
// bounded, and when the school server publishes a real version the laptop
// still finds it and applies it: the flood neither fills its memory nor
// keeps it polling forged peers (a poll waits 10 s at most) nor makes it
// miss the server's announcement.
func TestAttackDiscoveryFloodOnTheLAN(t *testing.T) {
	if why := testlan.Available(); why != "" {
		t.Skip("testlan: " + why)
	}
	bin := buildBinary(t)
	lan := testlan.New(t, 3)
	f := newTestFleet(t)
	f.publish(t, 1)
	startIn(t, lan, 1, bin, "daemon", "--repo", f.repo.Dir(), "--trust", f.pub, "--iface", "e1")
	sysroot := f.sysrootAt(t, 1)
	bus := privateBus(t)
	up := ownerWatch(t, bus)
	w := watch(t, bus)
	laptop := startIn(t, lan, 2, bin, "daemon", "--sysroot", sysroot, "--trust", f.pub, "--bus", bus, "--iface", "e2", "--policy", "auto")
	(&watcher{ch: up}).until(t, "the laptop's daemon", func(*dbus.Signal) bool { return true })

	subnet := lan.Nodes[0].IP[:strings.LastIndexByte(lan.Nodes[0].IP, '.')+1]
	inNamespace(t, lan.Nodes[2].NS, func() {
		mdns, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
		if err != nil {
			t.Fatal(err)
		}
		defer mdns.Close()
		ann, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: discovery.Group("school-laptop", 1), Port: discovery.AnnouncePort})
		if err != nil {
			t.Fatal(err)
		}
		defer ann.Close()
		for i := range 10000 {
			// Addresses on the LAN that nobody holds: asking them costs
			// a connect timeout each.
			ip := net.ParseIP(subnet + strconv.Itoa(100+i%150))
			msg, err := hostile.Advert(fmt.Sprintf("forged-%d", i), ip, uint16(7400+i%1000), "school-laptop", uint64(5+i)).Pack()
			if err != nil {
				t.Fatal(err)
			}
			mdns.Write(msg)
			ann.Write(hostile.Announcement("school-laptop", uint64(5+i), strings.Repeat("ab", 32), 7400+i%1000))
		}
	})

	f.publish(t, 2)
	w.until(t, "the laptop applying the real v2 after the flood", stateIs(StateUpdateApplied))
	if v, _ := os.Readlink(sysroot + "/current"); !strings.HasSuffix(v, "/2") {
		t.Fatalf("current -> %s, want v2", v)
	}
	hwm := procStatusKB(laptop.Process.Pid, "VmHWM")
	t.Logf("laptop daemon peak RSS after the flood: %d KiB", hwm)
	if hwm <= 0 || hwm > 64<<10 {
		t.Errorf("laptop daemon peak RSS %d KiB: over 64 MiB, or unreadable", hwm)
	}
}

// procStatusKB reads a "NNN kB" field of /proc/PID/status.
func procStatusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == field {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return -1
}
