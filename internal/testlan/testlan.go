// Package testlan builds a LAN of network namespaces for tests: a bridge
// with no uplink, and nodes joined to it by veth pairs, each with an IPv4
// address and a multicast route. Traffic stays on the bridge; nothing leaves
// the machine. Everything is removed when the test ends, even if it fails.
package testlan

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// T is what the harness needs of its caller: a *testing.T, or the fleet
// benchmark's own runner.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Skip(args ...any)
	Cleanup(func())
}

// LAN is a bridge and its nodes.
type LAN struct {
	t      T
	Bridge string
	Nodes  []*Node
	subnet int // 10.99.<subnet>.0/24
}

// Node is one network namespace on the LAN.
type Node struct {
	NS    string // namespace name
	Iface string // its interface's name inside the namespace
	IP    string // its address, without prefix length
	host  string // the veth end on the bridge
}

// Available reports why the harness cannot run here, or "" if it can.
func Available() string {
	if os.Getuid() != 0 {
		return "needs root for network namespaces"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "needs ip from iproute2 (apt-get install iproute2)"
	}
	return ""
}

// New makes a LAN of n nodes, or skips the test with the reason it cannot.
func New(t T, n int) *LAN { return NewShaped(t, n, "") }

// NewShaped is New with every node's link shaped to rate (a tc rate such as
// "8mbit") in both directions with tbf, like a school's Wi-Fi.
func NewShaped(t T, n int, rate string) *LAN {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip("testlan: " + why)
	}
	var r [3]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	subnet := int(r[0])%200 + 20 // 10.99.<subnet>.0/24, random to let packages run in parallel
	l := &LAN{t: t, Bridge: "pub" + id, subnet: subnet}
	t.Cleanup(l.Close)
	l.run("link", "add", l.Bridge, "type", "bridge")
	// A bridge forwards multicast without snooping: every node hears every
	// group, as on a plain switch.
	l.run("link", "set", l.Bridge, "type", "bridge", "mcast_snooping", "0")
	l.run("link", "set", l.Bridge, "up")
	for i := 1; i <= n; i++ {
		node := &Node{NS: fmt.Sprintf("pu%s-%d", id, i), Iface: fmt.Sprintf("e%d", i), IP: fmt.Sprintf("10.99.%d.%d", subnet, i), host: fmt.Sprintf("v%s%d", id, i)}
		l.Nodes = append(l.Nodes, node)
		l.run("netns", "add", node.NS)
		l.run("link", "add", node.host, "type", "veth", "peer", "name", node.Iface)
		l.run("link", "set", node.Iface, "netns", node.NS)
		l.run("link", "set", node.host, "master", l.Bridge)
		l.run("link", "set", node.host, "up")
		l.run("-n", node.NS, "addr", "add", node.IP+"/24", "dev", node.Iface)
		l.run("-n", node.NS, "link", "set", node.Iface, "up")
		l.run("-n", node.NS, "link", "set", "lo", "up")
		l.run("-n", node.NS, "route", "add", "224.0.0.0/4", "dev", node.Iface)
		if rate != "" {
			shape := func(args ...string) {
				t.Helper()
				if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
					t.Fatalf("tc %s: %v\n%s", strings.Join(args, " "), err, out)
				}
			}
			tbf := []string{"root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"}
			shape(append([]string{"qdisc", "add", "dev", node.host}, tbf...)...)
			shape(append([]string{"-n", node.NS, "qdisc", "add", "dev", node.Iface}, tbf...)...)
		}
	}
	return l
}

// DropMulticastRoutes removes every node's route for 224.0.0.0/4: each is
// left with its address alone, as on an offline school LAN with no
// default route.
func (l *LAN) DropMulticastRoutes() {
	l.t.Helper()
	for _, n := range l.Nodes {
		l.run("-n", n.NS, "route", "del", "224.0.0.0/4", "dev", n.Iface)
	}
}

// Attach gives node i (1-based) of l a second interface, named iface, on
// other's bridge, with address 10.99.<other's subnet>.<host>, and returns
// that address: a seed on two LANs.
func (l *LAN) Attach(i int, other *LAN, iface string, host int) string {
	l.t.Helper()
	n := l.Nodes[i-1]
	peer := fmt.Sprintf("%sx%d", n.host, host)
	ip := fmt.Sprintf("10.99.%d.%d", other.subnet, host)
	l.run("link", "add", peer, "type", "veth", "peer", "name", iface)
	l.run("link", "set", iface, "netns", n.NS)
	l.run("link", "set", peer, "master", other.Bridge)
	l.run("link", "set", peer, "up")
	l.run("-n", n.NS, "addr", "add", ip+"/24", "dev", iface)
	l.run("-n", n.NS, "link", "set", iface, "up")
	return ip
}

// Readdress takes node i's interface down, gives it address 10.99.<subnet>.
// <host> in place of its own, and brings it up again: a laptop that
// sleeps and rejoins the Wi-Fi under a new lease.
func (l *LAN) Readdress(i, host int) string {
	l.t.Helper()
	n := l.Nodes[i-1]
	l.run("-n", n.NS, "link", "set", n.Iface, "down")
	l.run("-n", n.NS, "addr", "flush", "dev", n.Iface)
	n.IP = fmt.Sprintf("10.99.%d.%d", l.subnet, host)
	l.run("-n", n.NS, "addr", "add", n.IP+"/24", "dev", n.Iface)
	l.run("-n", n.NS, "link", "set", n.Iface, "up")
	return n.IP
}

// Received is how many bytes the LAN has delivered to node i (1-based).
func (l *LAN) Received(i int) int64 { return l.counter(i, "tx_bytes") }

// Sent is how many bytes node i (1-based) has sent onto the LAN, read from
// the interface counters.
func (l *LAN) Sent(i int) int64 { return l.counter(i, "rx_bytes") }

// counter reads one of the bridge-side veth's counters: what it receives is
// what the node sent.
func (l *LAN) counter(i int, name string) int64 {
	b, err := os.ReadFile("/sys/class/net/" + l.Nodes[i-1].host + "/statistics/" + name)
	if err != nil {
		return -1
	}
	var n int64
	fmt.Sscan(strings.TrimSpace(string(b)), &n)
	return n
}

func (l *LAN) run(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Command prepares name args to run inside node i's namespace (1-based).
func (l *LAN) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.Nodes[i-1].NS, name}, args...)...)
}

// AvahiScript is a shell script that runs a private dbus-daemon and
// avahi-daemon (on iface alone, its own host name, services from the
// folder services if not "") in a mount namespace of a node, then cmd. Run
// it with `unshare -m sh -c SCRIPT` through Command.
func AvahiScript(dir, iface, services, cmd string) string {
	conf := filepath.Join(dir, "avahi.conf")
	os.WriteFile(conf, []byte(`[server]
use-ipv6=no
allow-interfaces=`+iface+`
host-name=avahi-`+iface+`
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
`), 0o644)
	bind := ""
	if services != "" {
		bind = "mount --bind " + services + " /etc/avahi/services; "
	}
	return "mount -t tmpfs none /run; mkdir -p /run/dbus /run/avahi-daemon; " + bind +
		"dbus-daemon --system --fork; avahi-daemon -f " + conf + " --no-drop-root --no-chroot -D; " + cmd
}

// Close removes the nodes and the bridge. It is registered with t.Cleanup.
func (l *LAN) Close() {
	for _, n := range l.Nodes {
		exec.Command("ip", "netns", "pids", n.NS).Output()
		if out, err := exec.Command("ip", "netns", "pids", n.NS).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				exec.Command("kill", "-9", pid).Run()
			}
		}
		exec.Command("ip", "link", "del", n.host).Run()
		exec.Command("ip", "netns", "del", n.NS).Run()
	}
	exec.Command("ip", "link", "del", l.Bridge).Run()
}
