package discovery

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
)

// link is one interface discovery works on: up, multicast-capable, not
// loopback, with an IPv4 address. Sockets join their groups on each link
// by index and send on each, so no route is needed (an offline school LAN
// has none for 224.0.0.0/4), and a node on two LANs is heard on both.
type link struct {
	ifi   net.Interface
	addrs []net.IP // IPv4, as the interface has them now
}

// state says what a link is now: a new address is a change, after which
// the node joins and announces there again.
func (l link) state() string {
	var b strings.Builder
	b.WriteString(l.ifi.Name)
	for _, a := range l.addrs {
		b.WriteByte(' ')
		b.WriteString(a.String())
	}
	return b.String()
}

// scanLinks lists the links discovery uses now: every up, multicast-capable,
// non-loopback interface with an IPv4 address, or only the one named.
func scanLinks(name string) ([]link, error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("discovery: list interfaces: %w", err)
	}
	var out []link
	for _, ifi := range all {
		if name != "" && ifi.Name != name {
			continue
		}
		if name == "" && (ifi.Flags&net.FlagLoopback != 0 || ifi.Flags&net.FlagMulticast == 0) {
			continue
		}
		if ifi.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, _ := ifi.Addrs()
		l := link{ifi: ifi}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				l.addrs = append(l.addrs, n.IP.To4())
			}
		}
		if len(l.addrs) > 0 {
			out = append(out, l)
		}
	}
	return out, nil
}

// LinkAddrs lists the IPv4 addresses of the links discovery uses now
// (every up, multicast-capable, non-loopback interface, or only the one
// named): a node serves its repo where it is advertised, and nowhere else.
func LinkAddrs(iface string) ([]net.IP, error) {
	links, err := scanLinks(iface)
	if err != nil {
		return nil, err
	}
	var out []net.IP
	for _, l := range links {
		out = append(out, l.addrs...)
	}
	return out, nil
}

// nodeID is a short, stable tag that tells identical laptops apart: they
// share an image, so a host name and often /etc/machine-id, but not their
// network hardware. It is derived from the machine id and the hardware
// addresses of the node's interfaces.
func nodeID() string {
	h := sha256.New()
	if id, err := os.ReadFile("/etc/machine-id"); err == nil {
		h.Write(id)
	}
	var macs []string
	if all, err := net.Interfaces(); err == nil {
		for _, ifi := range all {
			if ifi.Flags&net.FlagLoopback == 0 && len(ifi.HardwareAddr) > 0 {
				macs = append(macs, ifi.HardwareAddr.String())
			}
		}
	}
	slices.Sort(macs)
	for _, m := range macs {
		h.Write([]byte(m))
	}
	return hex.EncodeToString(h.Sum(nil))[:6]
}

// hostLabel makes a DNS label of a host name: its first label, lower case,
// anything but letters, digits and '-' dropped.
func hostLabel(host string) string {
	host = strings.ToLower(strings.Split(host, ".")[0])
	var b strings.Builder
	for _, r := range host {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "peerup"
	}
	return b.String()
}
