package discovery

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/peerup/peerup/internal/hostile"
)

// TestAttackDiscoveryFlood asserts that 10,000 forged mDNS adverts and
// 10,000 forged announcements, each naming a different peer, are taken in
// at the intake rate only (exactly the burst while the clock stands still,
// then the rate per second), that the table never holds more than its
// bound however fast the clock runs, and that the flood allocates a
// bounded amount. Oversized TXT records and announcements add nothing.
func TestAttackDiscoveryFlood(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := NewManager("school-laptop", func() uint64 { return 3 })
	m.now = func() time.Time { return now }
	from := net.IPv4(10, 99, 0, 1)
	advert := func(i int, extra ...string) {
		ip := net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))
		msg := hostile.Advert(fmt.Sprintf("fake-%d", i), ip, 7380, "school-laptop", uint64(4+i), extra...)
		b, err := msg.Pack()
		if err != nil {
			t.Fatal(err)
		}
		var back dns.Msg
		if err := back.Unpack(b); err != nil {
			t.Fatal(err)
		}
		for _, p := range peersFromMsg(&back, from) {
			m.Found(p)
		}
	}
	announce := func(i int, pad string) {
		b := append(hostile.Announcement("school-laptop", uint64(4+i), strings.Repeat("ab", 32), 7380), pad...)
		if a, err := ParseAnnouncement(b); err == nil {
			m.Found(Peer{URL: PeerURL(net.IPv4(10, 200, byte(i>>8), byte(i)), a.Port), Image: a.Image, Version: a.Version, Source: SourceMulticast})
		}
	}

	// Oversized records first, with the whole burst available: none counts.
	for i := range 100 {
		advert(i, "pad="+strings.Repeat("x", 240), "pad2="+strings.Repeat("y", 240), "pad3="+strings.Repeat("z", 240), "pad4="+strings.Repeat("w", 240), "pad5="+strings.Repeat("v", 240))
		announce(i, strings.Repeat("x", 600))
	}
	if n := m.Len(); n != 0 {
		t.Fatalf("%d peers from oversized records", n)
	}

	var allocs uint64
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	for i := range 10000 {
		advert(i)
		announce(i, "")
	}
	runtime.ReadMemStats(&b)
	allocs = b.TotalAlloc - a.TotalAlloc
	if n := m.Len(); n != intakeMax {
		t.Fatalf("a flood at a standing clock let %d peers in, want the burst, %d", n, intakeMax)
	}
	now = now.Add(time.Second)
	for i := 10000; i < 10100; i++ {
		advert(i)
	}
	if n := m.Len(); n != intakeMax+intakeRPS {
		t.Fatalf("one second later: %d peers, want %d", n, intakeMax+intakeRPS)
	}
	// However fast reports are allowed in, the table stays bounded.
	for i := range 10000 {
		if i%intakeRPS == 0 {
			now = now.Add(time.Second)
		}
		advert(20000 + i)
	}
	if n := m.Len(); n > maxPeers {
		t.Fatalf("%d peers in a table bounded at %d", n, maxPeers)
	}
	if allocs > 256<<20 {
		t.Errorf("20,000 forged reports allocated %d MiB", allocs>>20)
	}
	select {
	case <-m.Newer():
	default:
		t.Error("no wake-up at all: the flood should still wake the daemon once")
	}
	select {
	case <-m.Newer():
		t.Error("more than one pending wake-up")
	default:
	}
}
